"""Pure domain logic: no Dagster, no SQL, no network. Inputs are DataFrames, models and plain values."""
