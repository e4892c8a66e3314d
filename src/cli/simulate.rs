//! `payhook simulate`: send one correctly signed sample callback.

use crate::config::Config;
use crate::domain::{AmountFen, ProviderKind};
use crate::ingress::registry::build_sandbox_signer;
use crate::ingress::{SampleKind, SampleSpec, SignedRequest};

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("no account `{account}` in the config; its accounts are: {known}")]
    UnknownAccount { account: String, known: String },
    #[error("account `{account}` is a {actual} account, not {asked}")]
    WrongProvider {
        account: String,
        actual: ProviderKind,
        asked: String,
    },
    #[error("amount: {0}")]
    Amount(#[from] crate::domain::AmountError),
    #[error(transparent)]
    Account(#[from] crate::ingress::registry::AccountError),
    #[error("signing: {0}")]
    Sign(#[from] crate::ingress::SignError),
    #[error("cannot reach the relay at {url}: {cause}")]
    Send { url: String, cause: String },
}

/// The error and its causes, joined: reqwest's own text ("error sending
/// request") does not say that the connection was refused.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub struct SimulateArgs {
    pub provider: String,
    pub account: String,
    pub url: Option<String>,
    pub kind: SampleKind,
    pub amount: i64,
    pub forge: bool,
}

/// What the provider got back.
pub struct SimulateOutcome {
    pub url: String,
    pub status: u16,
    pub body: String,
}

/// Signs a sample for `args.account` as its provider would.
pub fn sign(config: &Config, args: &SimulateArgs) -> Result<SignedRequest, SimulateError> {
    let account = config.account(&args.account).ok_or_else(|| {
        let known: Vec<String> = config
            .accounts
            .iter()
            .map(|a| format!("{} ({})", a.id, a.provider().as_str()))
            .collect();
        SimulateError::UnknownAccount {
            account: args.account.clone(),
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        }
    })?;
    if !account.provider().as_str().eq_ignore_ascii_case(&args.provider) {
        return Err(SimulateError::WrongProvider {
            account: args.account.clone(),
            actual: account.provider(),
            asked: args.provider.clone(),
        });
    }
    let signer = build_sandbox_signer(account)?;
    let id = ulid::Ulid::new().to_string();
    let spec = SampleSpec {
        kind: args.kind,
        amount: AmountFen::from_fen(args.amount)?,
        trade_no: format!("SIM{id}"),
        merchant_order_no: format!("ORDER-{}", &id[16..]),
        now: chrono::Utc::now(),
        forge: args.forge,
    };
    Ok(signer.sign_sample(&spec)?)
}

pub async fn send(url: &str, signed: &SignedRequest) -> Result<(u16, String), reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, signed.content_type)
        .body(signed.body.clone());
    for (k, v) in &signed.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok((status, body))
}

pub async fn run(config: &Config, args: &SimulateArgs) -> Result<SimulateOutcome, SimulateError> {
    let signed = sign(config, args)?;
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}/notify/{}", config.server.listen, args.account));
    let (status, body) = send(&url, &signed).await.map_err(|e| SimulateError::Send {
        url: url.clone(),
        cause: causes(&e),
    })?;
    Ok(SimulateOutcome { url, status, body })
}
