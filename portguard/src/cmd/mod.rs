pub mod lab;
pub mod run;
