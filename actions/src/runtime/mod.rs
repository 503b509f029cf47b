pub mod context;
pub mod event;
pub mod executor;
pub mod mask;
pub mod plan;
pub mod registry;
pub mod report;
pub mod wait;
