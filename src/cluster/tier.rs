//! The shared cache tier: what one instance fetched, every instance serves, for `cache.ttl_secs`.
//!
//! Charts are stored as the JSON the service serves (`"bars":...,"metadata":...`), one key per
//! bars format, so a hit on another instance sends the very bytes the fetching instance made and
//! costs one `MGET`; the chart's bars are read back from the objects form for what needs them
//! (live updates, the other format). Formula stock lists are stored as their JSON. Each instance's
//! in-memory cache stays in front: Redis is asked only on a local miss.
//!
//! Nothing secret is stored: charts and stock lists are what the API answers anyway (a formula's
//! key or URL is not part of its result).

use std::sync::Arc;

use bytes::Bytes;

use super::{Cluster, keys};
use crate::cache::ChartKey;
use crate::domain::BarsFormat;
use crate::formulas::FormulaResult;
use crate::ready_chart::ReadyChart;

impl Cluster {
    /// The chart from the shared tier, if there and readable.
    pub(crate) async fn cached_chart(&self, key: &ChartKey) -> Option<Arc<ReadyChart>> {
        let objects_key = keys::chart(key, BarsFormat::Objects);
        let columns_key = keys::chart(key, BarsFormat::Columns);
        let (objects, columns): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .run(|mut conn| async move {
                redis::cmd("MGET")
                    .arg(objects_key)
                    .arg(columns_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let chart = ReadyChart::from_json(
            key.symbol.clone(),
            key.resolution,
            Bytes::from(objects?),
            columns.map(Bytes::from),
        );
        if chart.is_none() {
            log::warn!(
                "cluster: the shared cache's {} {} is not readable; fetching it instead",
                key.symbol.as_str(),
                key.resolution.as_str()
            );
        }
        chart.map(Arc::new)
    }

    /// The keys and JSON of both bars formats of `chart`, as [`super::lock::finish`] writes them.
    pub(crate) fn chart_entries(key: &ChartKey, chart: &ReadyChart) -> [(String, Bytes); 2] {
        [BarsFormat::Objects, BarsFormat::Columns]
            .map(|format| (keys::chart(key, format), chart.json_fields(format).clone()))
    }

    /// A formula's stock list from the shared tier.
    pub(crate) async fn cached_formula(&self, id: &str) -> Option<FormulaResult> {
        let key = keys::formula(id);
        let json: Option<Vec<u8>> = self
            .run(|mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        serde_json::from_slice(&json?).ok()
    }

    /// Stores a formula's stock list for `cache.ttl_secs` (not waited for).
    pub(crate) fn store_formula(&self, id: &str, result: &FormulaResult) {
        let Ok(json) = serde_json::to_vec(result) else {
            return;
        };
        let key = keys::formula(id);
        let ttl = super::millis(self.cache_ttl());
        self.run_detached(move |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(json)
                .arg("PX")
                .arg(ttl)
                .query_async::<()>(&mut conn)
                .await
        });
    }
}
