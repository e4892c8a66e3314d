//! One platform key signs the notices of every merchant of a provider: a
//! notice signed for account A and posted to account B, which verifies with
//! the same key, must never be accepted (`../spec`, "Every notice is bound to
//! its account"). Providers whose notices name no merchant (CBB, Dryad)
//! cannot bind, so two such accounts may not share a key at all.

use std::time::Duration;

use axum::http::HeaderValue;
use proptest::prelude::*;

use super::abc::{Abc, AbcAlgorithm, AbcSandbox};
use super::common::SandboxKey;
use super::common::{RsaPublicKey, RsaSigningKey};
use super::dingdang::{Dingdang, DingdangSandbox, DingdangScheme};
use super::registry::{build_accounts, AccountErrorKind};
use super::shouqianba::{Shouqianba, ShouqianbaSandbox, SqbSignMode};
use super::tests_support::{request_of, sample_spec, vectors_dir, verify_and_parse};
use super::{Provider, Rejection, SampleKind, SampleSigner};
use crate::config::Config;

fn public(file: &str, bits: usize) -> RsaPublicKey {
    RsaPublicKey::load(&vectors_dir().join("keys").join(file), bits).unwrap()
}

fn private(file: &str) -> RsaSigningKey {
    RsaSigningKey::load(&vectors_dir().join("keys").join(file)).unwrap()
}

/// Signs a sample for `signer`'s account and posts it to `provider`'s: refused
/// whatever the kind; `Err` is what it was refused with.
fn cross_post(signer: &dyn SampleSigner, provider: &dyn Provider) -> Result<(), Rejection> {
    let spec = sample_spec(SampleKind::Payment, 100);
    let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
    let req = super::RawRequest::new(&headers, &body);
    provider.accept(&req, spec.now).map(|_| ())
}

/// Two different merchant identifiers.
fn two_ids() -> impl Strategy<Value = (String, String)> {
    ("[0-9]{6,18}", "[0-9]{6,18}").prop_filter("different", |(a, b)| a != b)
}

const SKEW: Duration = Duration::from_secs(180);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn shouqianba_rsa_notice_for_another_terminal_is_refused((a, b) in two_ids()) {
        let signer = ShouqianbaSandbox::new(a.clone(), SandboxKey::Rsa { key: private("sqb_sandbox_priv.pem") });
        let victim = Shouqianba::new(b.clone(), SqbSignMode::Rsa { keys: public("sqb_pub.pem", 2048).into() });
        prop_assert!(cross_post(&signer, &victim).is_err());
        // The header's terminal is not signed: rewritten to the victim's, the
        // signature still verifies, and only the body's terminal_sn refuses it.
        let spec = sample_spec(SampleKind::Payment, 100);
        let (mut headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
        let auth = headers["authorization"].to_str().unwrap().replacen(&a, &b, 1);
        headers.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        prop_assert_eq!(
            verify_and_parse(&victim, &headers, &body, spec.now),
            Err(Rejection::WrongAccount("terminal_sn"))
        );
        // Its own account accepts it.
        let own = Shouqianba::new(a, SqbSignMode::Rsa { keys: public("sqb_pub.pem", 2048).into() });
        prop_assert!(cross_post(&signer, &own).is_ok());
    }

    #[test]
    fn abc_notice_for_another_merchant_is_refused((a, b) in two_ids()) {
        let signer = AbcSandbox::new(private("abc_sandbox_priv.pem"), AbcAlgorithm::Sha1WithRsa, a.clone());
        let key = || public("abc_trustpay_cert.pem", 1024);
        let victim = Abc::new(key(), AbcAlgorithm::Sha1WithRsa, b);
        prop_assert_eq!(cross_post(&signer, &victim), Err(Rejection::WrongAccount("MerchantID")));
        prop_assert!(cross_post(&signer, &Abc::new(key(), AbcAlgorithm::Sha1WithRsa, a)).is_ok());
    }

    #[test]
    fn dingdang_notice_for_another_skill_is_refused((a, b) in two_ids(), rsa in any::<bool>()) {
        let (signer, victim, own) = if rsa {
            let scheme = || DingdangScheme::Rsa2 { keys: public("dingdang_platform_pub.pem", 2048).into() };
            (
                DingdangSandbox::new(SandboxKey::Rsa { key: private("dingdang_sandbox_priv.pem") }, a.clone()),
                Dingdang::new(scheme(), SKEW, b),
                Dingdang::new(scheme(), SKEW, a),
            )
        } else {
            let secret = b"one-platform-secret".to_vec();
            (
                DingdangSandbox::new(SandboxKey::Secret { secret: secret.clone() }, a.clone()),
                Dingdang::new(DingdangScheme::HmacSha256 { secrets: secret.clone().into() }, SKEW, b),
                Dingdang::new(DingdangScheme::HmacSha256 { secrets: secret.into() }, SKEW, a),
            )
        };
        prop_assert_eq!(cross_post(&signer, &victim), Err(Rejection::WrongAccount("skillId")));
        prop_assert!(cross_post(&signer, &own).is_ok());
    }
}

/// CBB and Dryad notices name no merchant: two accounts with one key are
/// refused at start-up, naming both.
#[test]
fn accounts_that_cannot_be_told_apart_are_refused() {
    let keys = vectors_dir().join("keys");
    let cases = [
        "[[accounts]]\nid = \"cbb-one\"\nprovider = \"cbb\"\npublic_key_file = \"cbb_platform_pub.pem\"\n\
         [[accounts]]\nid = \"cbb-two\"\nprovider = \"cbb\"\npublic_key_file = \"cbb_platform_pub.pem\"\n",
        "[[accounts]]\nid = \"dryad-one\"\nprovider = \"dryad\"\nsecret = \"same\"\n\
         [[accounts]]\nid = \"dryad-two\"\nprovider = \"dryad\"\nsecret = \"same\"\n",
    ];
    for text in cases {
        let config = Config::from_toml_str(text, &keys, &|_| None).unwrap();
        let err = build_accounts(&config.accounts).err().expect("refused");
        assert!(matches!(err.source, AccountErrorKind::SharedKey { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("-one") && message.contains("-two"), "{message}");
    }
    // Providers that bind by a signed field may share the platform key.
    let text = "[[accounts]]\nid = \"sqb-one\"\nprovider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"1\"\n\
                public_key_file = \"sqb_pub.pem\"\n\
                [[accounts]]\nid = \"sqb-two\"\nprovider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"2\"\n\
                public_key_file = \"sqb_pub.pem\"\n";
    let config = Config::from_toml_str(text, &keys, &|_| None).unwrap();
    assert!(build_accounts(&config.accounts).is_ok());
}
