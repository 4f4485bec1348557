//! `hdr_quantile(startup_hist, q)`: an aggregate that merges serialized start-time histograms
//! (`qoe_window.startup_hist`, HdrHistogram V2) and returns the `q` quantile (0..=1) in ms, or NULL
//! without any recorded value. Mergeable partial states, so it works in parallel and grouped plans.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};
use hdrhistogram::Histogram;
use schemas::hist::{add_serialized, new_histogram, serialize_histogram};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HdrQuantile {
    signature: Signature,
}

pub fn hdr_quantile() -> AggregateUDF {
    AggregateUDF::from(HdrQuantile {
        signature: Signature::exact(vec![DataType::Binary, DataType::Float64], Volatility::Immutable),
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
        Ok(Box::new(HdrAccumulator { hist: new_histogram(), q: None }))
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new("hist", DataType::Binary, true)),
            Arc::new(Field::new("q", DataType::Float64, true)),
        ])
    }
}

#[derive(Debug)]
struct HdrAccumulator {
    hist: Histogram<u64>,
    q: Option<f64>,
}

impl HdrAccumulator {
    fn add(&mut self, hists: &BinaryArray, qs: &Float64Array) -> Result<()> {
        for i in 0..hists.len() {
            if self.q.is_none() && qs.is_valid(i) {
                let q = qs.value(i);
                if !(0.0..=1.0).contains(&q) {
                    return Err(DataFusionError::Execution(format!("hdr_quantile: q must be between 0 and 1, got {q}")));
                }
                self.q = Some(q);
            }
            if hists.is_valid(i) && !hists.value(i).is_empty() {
                add_serialized(&mut self.hist, hists.value(i))
                    .map_err(|e| DataFusionError::Execution(format!("hdr_quantile: not a serialized HdrHistogram: {e}")))?;
            }
        }
        Ok(())
    }
}

impl Accumulator for HdrAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(values[0].as_binary::<i32>(), values[1].as_primitive::<Float64Type>())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.add(states[0].as_binary::<i32>(), states[1].as_primitive::<Float64Type>())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(serialize_histogram(&self.hist))), ScalarValue::Float64(self.q)])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let v = match self.q {
            Some(q) if self.hist.len() > 0 => Some(self.hist.value_at_quantile(q) as f64),
            _ => None,
        };
        Ok(ScalarValue::Float64(v))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.hist.distinct_values() * 8
    }
}
