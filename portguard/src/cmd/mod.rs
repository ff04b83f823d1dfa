pub mod args;
pub mod capture;
pub mod check;
pub mod completions;
pub mod detach;
pub mod lab;
pub mod run;
#[cfg(test)]
mod schema;
pub mod set;
pub mod stats;
pub mod status;
pub mod top;
