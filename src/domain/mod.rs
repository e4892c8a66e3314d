//! The vocabulary of payhook: parsed newtypes and the normalized event.
//!
//! Every value here is built only through `parse`/`TryFrom`, so code that holds
//! an `AmountFen` or an `AccountId` never has to re-check it.

mod amount;
mod event;
mod ids;
mod outcome;

pub use amount::{AmountError, AmountFen};
pub use event::{format_time, Event, EventType, Notification, ProviderKind};
pub use ids::{AccountId, EndpointId, EventId, IdError};
pub use outcome::{AttemptOutcome, DeliveryStatus};
