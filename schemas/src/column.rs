//! A table column's name and type: the vocabulary `tables` and `measures` describe columns in.

/// A column's type; Arrow and ClickHouse types derive from it (`crate::tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Bool,
    Int64,
    UInt64,
    Float64,
    Utf8,
    Binary,
    TimestampMs,
}

/// One column of an output table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub nullable: bool,
}

pub(crate) const fn c(name: &'static str, ty: ColType) -> Column {
    Column { name, ty, nullable: false }
}
pub(crate) const fn n(name: &'static str, ty: ColType) -> Column {
    Column { name, ty, nullable: true }
}
