//! `hdr_quantile(startup_hist, startup_hist_retract, q)`: an aggregate that merges serialized start-time
//! histograms (`qoe_window.startup_hist`, HdrHistogram V2), subtracts the merged retractions of
//! corrections (`startup_hist_retract`, empty bytes when none) and returns the `q` quantile (0..=1) in
//! ms, or NULL without any value left. Mergeable partial states, so it works in parallel and grouped
//! plans. `hdr_quantile(startup_hist, q)` merges the additions only: exact while no start was corrected.
//!
//! `hdr_merge(startup_hist)`: the merged histogram itself, serialized (empty bytes when it holds
//! nothing, like the column): a partial aggregate the metrics API keeps and merges further (the
//! closed hours' cache, [`crate::hours`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};
use hdrhistogram::Histogram;
use schemas::hist::{add_serialized, new_histogram, serialize_histogram};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HdrQuantile {
    signature: Signature,
}

pub fn hdr_quantile() -> AggregateUDF {
    AggregateUDF::from(HdrQuantile {
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Binary, DataType::Float64]),
                TypeSignature::Exact(vec![DataType::Binary, DataType::Binary, DataType::Float64]),
            ],
            Volatility::Immutable,
        ),
    })
}

impl AggregateUDFImpl for HdrQuantile {
    fn name(&self) -> &str {
        "hdr_quantile"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(HdrAccumulator { hist: new_histogram(), retract: new_histogram(), q: None }))
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("hist", DataType::Binary, true)),
            Arc::new(Field::new("retract", DataType::Binary, true)),
            Arc::new(Field::new("q", DataType::Float64, true)),
        ])
    }
}

/// The [`crate::metrics::QUANTILES`] (None without a value) of the merged serialized histograms
/// `hists` less the merged `retracts` (corrections), subtracted once everything is merged: the API's
/// merges outside SQL (ClickHouse's rows, the closed hours' cache).
pub fn quantiles_of_serialized(hists: &[&[u8]], retracts: &[&[u8]]) -> crate::Result<Vec<Option<f64>>> {
    use crate::metrics::QUANTILES;
    let merge = |parts: &[&[u8]]| -> crate::Result<Histogram<u64>> {
        let mut h = new_histogram();
        for bytes in parts {
            add_serialized(&mut h, bytes).map_err(|e| crate::Error::msg(format!("not a serialized HdrHistogram: {e}")))?;
        }
        Ok(h)
    };
    if hists.is_empty() && retracts.is_empty() {
        return Ok(vec![None; QUANTILES.len()]);
    }
    let mut net = merge(hists)?;
    if !retracts.is_empty() {
        net.subtract(&merge(retracts)?).map_err(|e| crate::Error::msg(format!("the retracted start times exceed the added ones: {e:?}")))?;
    }
    Ok(QUANTILES.iter().map(|(_, q)| (!net.is_empty()).then(|| net.value_at_quantile(*q) as f64)).collect())
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HdrMerge {
    signature: Signature,
}

pub fn hdr_merge() -> AggregateUDF {
    AggregateUDF::from(HdrMerge { signature: Signature::exact(vec![DataType::Binary], Volatility::Immutable) })
}

impl AggregateUDFImpl for HdrMerge {
    fn name(&self) -> &str {
        "hdr_merge"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Binary)
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MergeAccumulator { hist: None }))
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("hist", DataType::Binary, true))])
    }
}

/// `hdr_merge`'s state: no histogram (and no 190 KB of counts) until a non-empty one comes.
#[derive(Debug)]
struct MergeAccumulator {
    hist: Option<Histogram<u64>>,
}

impl MergeAccumulator {
    fn serialized(&self) -> Vec<u8> {
        self.hist.as_ref().filter(|h| !h.is_empty()).map(serialize_histogram).unwrap_or_default()
    }
}

impl Accumulator for MergeAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let hists = values.first().ok_or_else(|| DataFusionError::Execution("hdr_merge takes (hist)".into()))?.as_binary::<i32>();
        if (0..hists.len()).any(|i| hists.is_valid(i) && !hists.value(i).is_empty()) {
            merge_into(self.hist.get_or_insert_with(new_histogram), hists)?;
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.serialized()))])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Binary(Some(self.serialized())))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.hist.as_ref().map_or(0, |h| h.distinct_values() * 8)
    }
}

#[derive(Debug)]
struct HdrAccumulator {
    hist: Histogram<u64>,
    retract: Histogram<u64>,
    q: Option<f64>,
}

/// Merges every non-empty serialized histogram of `hists` into `into`.
fn merge_into(into: &mut Histogram<u64>, hists: &BinaryArray) -> Result<()> {
    for i in 0..hists.len() {
        if hists.is_valid(i) && !hists.value(i).is_empty() {
            add_serialized(into, hists.value(i))
                .map_err(|e| DataFusionError::Execution(format!("hdr_quantile: not a serialized HdrHistogram: {e}")))?;
        }
    }
    Ok(())
}

impl HdrAccumulator {
    /// `values`: the histograms, optionally the retractions, and q.
    fn add_all(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (hists, retracts, qs) = match values {
            [h, q] => (h, None, q),
            [h, r, q] => (h, Some(r), q),
            _ => return Err(DataFusionError::Execution("hdr_quantile takes (hist, q) or (hist, retract, q)".into())),
        };
        if let Some(r) = retracts {
            merge_into(&mut self.retract, r.as_binary::<i32>())?;
        }
        self.add(hists.as_binary::<i32>(), qs.as_primitive::<Float64Type>())
    }

    fn add(&mut self, hists: &BinaryArray, qs: &Float64Array) -> Result<()> {
        for i in 0..hists.len() {
            if self.q.is_none() && qs.is_valid(i) {
                let q = qs.value(i);
                if !(0.0..=1.0).contains(&q) {
                    return Err(DataFusionError::Execution(format!("hdr_quantile: q must be between 0 and 1, got {q}")));
                }
                self.q = Some(q);
            }
        }
        merge_into(&mut self.hist, hists)
    }
}

impl Accumulator for HdrAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add_all(values)
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.add_all(states)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Binary(Some(serialize_histogram(&self.hist))),
            ScalarValue::Binary(Some(serialize_histogram(&self.retract))),
            ScalarValue::Float64(self.q),
        ])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut net = self.hist.clone();
        if self.retract.len() > 0 {
            net.subtract(&self.retract).map_err(|e| {
                DataFusionError::Execution(format!(
                    "hdr_quantile: the retracted start times exceed the added ones ({e:?}); read every row of each window"
                ))
            })?;
        }
        let v = match self.q {
            Some(q) if net.len() > 0 => Some(net.value_at_quantile(q) as f64),
            _ => None,
        };
        Ok(ScalarValue::Float64(v))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + (self.hist.distinct_values() + self.retract.distinct_values()) * 8
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::prelude::SessionContext;

    /// A serialized histogram of `values`.
    pub(crate) fn hist(values: &[u64]) -> Vec<u8> {
        let mut h = new_histogram();
        for v in values {
            h.record(*v).expect("in range");
        }
        serialize_histogram(&h)
    }

    /// A window's rows: two starts added (100, 900), then a correction row that moves 900 to 300.
    #[tokio::test]
    async fn retractions_are_subtracted_after_merging() {
        let schema = Arc::new(Schema::new(vec![Field::new("h", DataType::Binary, false), Field::new("r", DataType::Binary, false)]));
        let (a, b, none, r) = (hist(&[100, 900]), hist(&[300]), Vec::new(), hist(&[900]));
        let h = BinaryArray::from_vec(vec![a.as_slice(), b.as_slice()]);
        let r = BinaryArray::from_vec(vec![none.as_slice(), r.as_slice()]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(h), Arc::new(r)]).expect("batch");
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch).expect("table");
        ctx.register_udaf(hdr_quantile());
        let rows = ctx
            .sql("SELECT hdr_quantile(h, r, 1.0) AS net, hdr_quantile(h, 1.0) AS added, hdr_quantile(h, r, 0.0) AS low FROM t")
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let col = |i: usize| rows[0].column(i).as_primitive::<Float64Type>().value(0);
        assert_eq!((col(0), col(1), col(2)), (300.0, 900.0, 100.0), "900 was retracted; the 2-argument form ignores retractions");
        // Retracting what was never added (a partial read of a window) is an error, not a wrong value.
        let err = ctx.sql("SELECT hdr_quantile(r, h, 0.5) FROM t").await.expect("plan").collect().await;
        assert!(err.is_err_and(|e| e.to_string().contains("exceed")));
    }
}
