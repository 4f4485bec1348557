//! `hdr_quantile(startup_hist, startup_hist_retract, q)`: an aggregate that merges serialized start-time
//! histograms (`qoe_window.startup_hist`, HdrHistogram V2), subtracts the merged retractions of
//! corrections (`startup_hist_retract`, empty bytes when none) and returns the `q` quantile (0..=1) in
//! ms, or NULL without any value left. Mergeable partial states, so it works in parallel and grouped
//! plans. `hdr_quantile(startup_hist, q)` merges the additions only: exact while no start was corrected.

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
