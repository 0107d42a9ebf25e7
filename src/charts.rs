//! The chart service: the cache in front of the pool. Every chart a route or a stream needs goes
//! through [`ChartService::get`], so identical fetches in flight are made once, finished charts are
//! served from the cache, and outcomes are counted in one place.

use std::sync::Arc;

use actix::Addr;
use actix_web::http::StatusCode;

use crate::cache::{Cache, CachedChart, ChartKey};
use crate::upstream::{FetchChart, FetchError, Pool};

/// Why one chart could not be had, as clients see it (`errors` entries, chart-data answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartFailure {
    pub code: &'static str,
    pub message: String,
}

impl ChartFailure {
    /// The HTTP status of `GET /api/chart-data` for this failure (SPEC 3.2).
    pub fn status(&self) -> StatusCode {
        match self.code {
            "unknown_symbol" => StatusCode::NOT_FOUND,
            "series_error" | "invalid_parameters" => StatusCode::UNPROCESSABLE_ENTITY,
            "upstream_timeout" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<&FetchError> for ChartFailure {
    fn from(e: &FetchError) -> Self {
        ChartFailure {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// A chart and whether it came from the cache.
pub type ChartOutcome = Result<(Arc<CachedChart>, bool), ChartFailure>;

#[derive(Clone)]
pub struct ChartService {
    pub cache: Arc<Cache>,
    pub pool: Addr<Pool>,
}

impl ChartService {
    pub async fn get(&self, key: ChartKey) -> ChartOutcome {
        let pool = self.pool.clone();
        let (request, wanted) =
            FetchChart::cancellable(key.symbol.clone(), key.resolution, key.bars);
        let outcome = self
            .cache
            .chart(key, move || async move {
                // Held while this load is awaited: if every waiter goes away the load is
                // dropped, and with it `wanted`, so the pool drops the fetch too.
                let _wanted = wanted;
                match pool.send(request).await {
                    Ok(result) => result,
                    Err(_) => Err(FetchError::Unavailable(
                        "the connection pool stopped".into(),
                    )),
                }
            })
            .await
            .map_err(|e| ChartFailure::from(e.as_ref()));
        let label = match &outcome {
            Ok((_, true)) => "cached",
            Ok((_, false)) => "ok",
            Err(_) => "failed",
        };
        metrics::counter!("chartgate_charts_served_total", "outcome" => label).increment(1);
        outcome
    }
}
