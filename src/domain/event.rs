//! The normalized event every provider's callback becomes.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AccountId, AmountFen, EventId};

/// Writes [`ProviderKind`] from the registry table (`ingress::for_each_provider`):
/// a variant per line, named as the line names it, spelled in the config,
/// the API and the store as the line's module.
macro_rules! provider_kind {
    ($($module:ident => $Type:ident,)*) => {
        /// The providers payhook can verify: one per line of the registry
        /// table in `ingress/mod.rs`, in its order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProviderKind {
            $($Type,)*
        }

        impl ProviderKind {
            pub const ALL: [ProviderKind; [$(stringify!($module)),*].len()] = [$(ProviderKind::$Type),*];

            /// Each provider's name, as [`ProviderKind::as_str`] spells it.
            pub const NAMES: [&'static str; [$(stringify!($module)),*].len()] = [$(stringify!($module)),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderKind::$Type => stringify!($module),)*
                }
            }
        }
    };
}

crate::ingress::for_each_provider!(provider_kind);

impl ProviderKind {
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The names for a message: `cbb, shouqianba, abc` with `last` (`or`)
    /// before the final one, or all joined by commas when `last` is `None`.
    pub fn listed(last: Option<&str>) -> String {
        match (last, Self::NAMES.split_last()) {
            (Some(word), Some((final_name, rest))) if !rest.is_empty() => {
                format!("{} {word} {final_name}", rest.join(", "))
            }
            _ => Self::NAMES.join(", "),
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ProviderKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for ProviderKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        Self::parse(&text).ok_or_else(|| serde::de::Error::unknown_variant(&text, &Self::NAMES))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    #[serde(rename = "payment.succeeded")]
    PaymentSucceeded,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
    #[serde(rename = "payment.canceled")]
    PaymentCanceled,
    #[serde(rename = "payment.expired")]
    PaymentExpired,
    #[serde(rename = "payment.error")]
    PaymentError,
    #[serde(rename = "payment.unknown")]
    PaymentUnknown,
    #[serde(rename = "refund.succeeded")]
    RefundSucceeded,
    #[serde(rename = "refund.failed")]
    RefundFailed,
    #[serde(rename = "refund.processing")]
    RefundProcessing,
    /// Shouqianba's `CREATED`: stored for the record, never delivered.
    #[serde(rename = "payment.created")]
    PaymentCreated,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::PaymentCanceled,
        EventType::PaymentExpired,
        EventType::PaymentError,
        EventType::PaymentUnknown,
        EventType::RefundSucceeded,
        EventType::RefundFailed,
        EventType::RefundProcessing,
        EventType::PaymentCreated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentFailed => "payment.failed",
            EventType::PaymentCanceled => "payment.canceled",
            EventType::PaymentExpired => "payment.expired",
            EventType::PaymentError => "payment.error",
            EventType::PaymentUnknown => "payment.unknown",
            EventType::RefundSucceeded => "refund.succeeded",
            EventType::RefundFailed => "refund.failed",
            EventType::RefundProcessing => "refund.processing",
            EventType::PaymentCreated => "payment.created",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether merchants receive this type at all.
    pub fn is_deliverable(self) -> bool {
        !matches!(self, EventType::PaymentCreated)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider module makes of one verified callback, before payhook gives
/// it an id and an account.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event_type: EventType,
    pub provider_trade_no: String,
    pub merchant_order_no: Option<String>,
    pub refund_no: Option<String>,
    pub amount: AmountFen,
    /// This refund's amount, when the notice states it.
    pub refund_amount: Option<AmountFen>,
    /// The trade's refunds so far, when that is all the notice states
    /// (Shouqianba, Alipay).
    pub refunded_total: Option<AmountFen>,
    pub currency: String,
    pub channel: Option<String>,
    pub channel_trade_no: Option<String>,
    pub business_params: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The provider's fields as received (a JSON object).
    pub raw: serde_json::Value,
    /// The provider-specific part of the dedup identity
    /// `(account, type, provider_trade_no, extra)`; see providers.md.
    pub dedup_extra: String,
}

impl Notification {
    /// A notification with the given identity and every optional field empty;
    /// provider modules fill in the rest.
    pub fn new(event_type: EventType, provider_trade_no: String, amount: AmountFen) -> Self {
        Self {
            event_type,
            provider_trade_no,
            merchant_order_no: None,
            refund_no: None,
            amount,
            refund_amount: None,
            refunded_total: None,
            currency: "CNY".to_owned(),
            channel: None,
            channel_trade_no: None,
            business_params: None,
            occurred_at: None,
            raw: serde_json::Value::Object(Default::default()),
            dedup_extra: String::new(),
        }
    }
}

/// The event as merchants receive it and RabbitMQ carries it. Field names and
/// order are part of the external contract.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub provider: ProviderKind,
    pub account: AccountId,
    pub provider_trade_no: String,
    pub merchant_order_no: Option<String>,
    pub refund_no: Option<String>,
    pub amount: AmountFen,
    pub refund_amount: Option<AmountFen>,
    pub refunded_total: Option<AmountFen>,
    pub currency: String,
    pub channel: Option<String>,
    pub channel_trade_no: Option<String>,
    pub business_params: Option<String>,
    #[serde(serialize_with = "ser_time_opt")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ser_time")]
    pub received_at: DateTime<Utc>,
    pub raw: serde_json::Value,
}

impl Event {
    pub fn new(
        id: EventId,
        provider: ProviderKind,
        account: AccountId,
        n: Notification,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            event_type: n.event_type,
            provider,
            account,
            provider_trade_no: n.provider_trade_no,
            merchant_order_no: n.merchant_order_no,
            refund_no: n.refund_no,
            amount: n.amount,
            refund_amount: n.refund_amount,
            refunded_total: n.refunded_total,
            currency: n.currency,
            channel: n.channel,
            channel_trade_no: n.channel_trade_no,
            business_params: n.business_params,
            occurred_at: n.occurred_at,
            received_at,
            raw: n.raw,
        }
    }
}

/// RFC 3339 in UTC with `Z`, milliseconds only when there are any, so that
/// `2025-08-25T06:35:00Z` reads as the spec writes it.
pub fn format_time(t: &DateTime<Utc>) -> String {
    use chrono::SecondsFormat;
    if t.timestamp_subsec_millis() == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

fn ser_time<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(t))
}

fn ser_time_opt<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}
