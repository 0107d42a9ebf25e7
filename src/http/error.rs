//! The one place errors become HTTP answers: `{"error": "<human message>", "code": "<machine_code>"}`
//! with a 4xx or 5xx status. Messages say what was wrong and what to do, and never hold a secret.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::{DomainError, truncate_for_message};
use crate::formulas::FormulaError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Every error answer's body (SPEC 3).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What was wrong and what to do, for a person.
    error: &'a str,
    /// What was wrong, for a program: `invalid_symbol`, `unknown_formula`, ...
    code: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs a token: send Authorization: Bearer <token> or ?access_token=<token>",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: &self.message,
            code: self.code,
        })
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let code = match e {
            DomainError::Symbol(_) => "invalid_symbol",
            DomainError::Resolution(_) => "invalid_resolution",
            DomainError::BarCount(_) => "invalid_bars",
            DomainError::BarsFormat(_) => "invalid_bars_format",
        };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<FormulaError> for ApiError {
    fn from(e: FormulaError) -> Self {
        match e {
            // The id is the caller's input: echo it bounded, however long it was.
            FormulaError::Unknown(id) => ApiError::not_found(
                "unknown_formula",
                FormulaError::Unknown(truncate_for_message(&id)).to_string(),
            ),
            FormulaError::Source { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "formula_source_error",
                e.to_string(),
            ),
        }
    }
}
