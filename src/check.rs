//! `cordon check`: does the sandbox hold, as seen from inside?

use crate::cli::CheckArgs;
use crate::error::Result;

pub fn run(args: &CheckArgs) -> Result<i32> {
    let _ = args;
    todo!("issue 3: check")
}
