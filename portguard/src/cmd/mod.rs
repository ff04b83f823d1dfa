pub mod check;
pub mod completions;
pub mod detach;
pub mod lab;
pub mod run;
pub mod set;
pub mod stats;
pub mod status;
