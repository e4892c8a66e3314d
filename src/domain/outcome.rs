//! Where a delivery stands, and how one attempt ended: stored in the
//! database as these strings, and (attempt outcomes) used as metric labels
//! of the contract.

/// Delivery attempt outcomes; label values are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    HttpError,
    Timeout,
    ConnectError,
    RefusedTarget,
    /// The job's endpoint is not in this dispatcher's config (a rolling
    /// config change): put back without an attempt, or dead once
    /// `[delivery] unknown_endpoint_grace` has passed.
    UnknownEndpoint,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::HttpError => "http_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::RefusedTarget => "refused_target",
            AttemptOutcome::UnknownEndpoint => "unknown_endpoint",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            AttemptOutcome::Delivered,
            AttemptOutcome::HttpError,
            AttemptOutcome::Timeout,
            AttemptOutcome::ConnectError,
            AttemptOutcome::RefusedTarget,
            AttemptOutcome::UnknownEndpoint,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// The state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}
