//! Building blocks of the CRDs' CEL rules, as macros because the derive wants string
//! literals (`concat!`) and the same text must appear in every rule that reads a duration.
//!
//! Every rule that calls `duration()` first checks the syntax itself: the apiserver runs
//! CEL rules even when a field fails its schema, and `duration('1 day')` is a runtime
//! error ("type conversion error from 'string' to 'google.protobuf.Duration'") that says
//! nothing about the field. A malformed duration is refused once, by the syntax rule
//! on the `Duration` schema, with a message that says what is wrong.

/// Go's duration syntax, which CEL's `duration()` parses (`30s`, `1h30m`, `1.5h`), with
/// at most five digits before a unit's point: with the 32 characters a duration may have,
/// nothing this accepts overflows Go's 2,562,047 hours (which would be a CEL runtime error
/// again); every limit we set is below 99,999 of its unit.
macro_rules! go_duration_re {
    () => {
        r"^[-+]?(0|(([0-9]{1,5}(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$"
    };
}

/// `$x` is a well-formed duration.
macro_rules! is_duration {
    ($x:literal) => {
        concat!($x, ".matches('", go_duration_re!(), "')")
    };
}

/// `$x` is a well-formed duration between `$lo` and `$hi`.
macro_rules! duration_in {
    ($x:literal, $lo:literal, $hi:literal) => {
        concat!(
            is_duration!($x),
            " && duration(",
            $x,
            ") >= duration('",
            $lo,
            "') && duration(",
            $x,
            ") <= duration('",
            $hi,
            "')"
        )
    };
}

/// A field rule: `self` lies between `$lo` and `$hi`, or is malformed (which the
/// syntax rule reports on its own).
macro_rules! duration_between {
    ($lo:literal, $hi:literal) => {
        concat!(
            "!",
            is_duration!("self"),
            " || (duration(self) >= duration('",
            $lo,
            "') && duration(self) <= duration('",
            $hi,
            "'))"
        )
    };
}
