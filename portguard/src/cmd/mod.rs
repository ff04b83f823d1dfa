pub mod check;
pub mod lab;
pub mod run;
pub mod top;
