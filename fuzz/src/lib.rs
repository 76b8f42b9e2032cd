//! What the fuzz targets share: inputs shaped with `arbitrary` so that the
//! fuzzer spends its time on the names and values the code under test
//! treats specially, and the simple models the targets hold the real code
//! against. Each target in `fuzz_targets/` fuzzes one function (or one
//! family of decoders); a new function under test gets a new target that
//! reuses these generators.

pub mod headers;
pub mod route;
