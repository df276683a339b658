//! Certificate chains, walked one way for every signature this crate checks: Authenticode
//! signers, Mach-O CMS signers and RFC 3161 time-stamp authorities. The callers phrase the
//! errors for their kind of signature; the rules are the same.

use std::time::SystemTime;

use der::Decode;
use x509_cert::ext::pkix::BasicConstraints;
use x509_certificate::CapturedX509Certificate;

use crate::error::ChainError;
use crate::key::describe_certificate;

/// Longest chain (leaf to root) followed; real chains have 2-4 links.
const MAX_CHAIN_LEN: usize = 8;

/// What a chain must end at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Anchors<'a> {
    /// One of these trusted roots (or intermediates).
    Roots(&'a [CapturedX509Certificate]),
    /// The top of the chain the signature itself carries: every signature, validity and CA
    /// constraint on the way is checked, but not who issued the top. For checking that a
    /// file is intact where its roots are not at hand (right after signing with a public
    /// TSA, say).
    Carried,
}

/// Follows issuers from `leaf` to one of the anchors. An issuer is a root, or a CA certificate
/// among `carried`, whose subject is the certificate's issuer name and whose key verifies
/// its signature; every certificate on the way, the root included, is valid at `at`. Only
/// CA certificates may issue below a root: otherwise any certificate under the root (a
/// code-signing leaf, say) could vouch for one of its own making.
pub(crate) fn check_chain(
    leaf: &CapturedX509Certificate,
    carried: &[CapturedX509Certificate],
    anchors: Anchors<'_>,
    at: SystemTime,
) -> Result<(), ChainError> {
    let tops;
    let roots = match anchors {
        Anchors::Roots(roots) => roots,
        Anchors::Carried => {
            tops = carried_tops(leaf, carried);
            &tops
        }
    };
    let issued = |issuer: &CapturedX509Certificate, certificate: &CapturedX509Certificate| {
        !same(issuer, certificate)
            && issuer.subject_name() == certificate.issuer_name()
            && certificate.verify_signed_by_certificate(issuer).is_ok()
    };
    let mut current = leaf;
    for _ in 0..MAX_CHAIN_LEN {
        check_validity(current, at)?;
        if roots.iter().any(|root| same(root, current)) {
            return Ok(());
        }
        if let Some(root) = roots.iter().find(|root| issued(root, current)) {
            return check_validity(root, at);
        }
        current = carried
            .iter()
            .find(|c| is_ca(c) && issued(c, current))
            .ok_or_else(|| ChainError::Untrusted {
                certificate: describe_certificate(current),
            })?;
    }
    Err(ChainError::TooLong {
        limit: MAX_CHAIN_LEN,
    })
}

/// The certificates among `leaf` and `carried` that none of the others issued (by name):
/// the tops of the carried chains.
fn carried_tops(
    leaf: &CapturedX509Certificate,
    carried: &[CapturedX509Certificate],
) -> Vec<CapturedX509Certificate> {
    let all: Vec<&CapturedX509Certificate> = std::iter::once(leaf).chain(carried).collect();
    all.iter()
        .filter(|certificate| {
            !all.iter().any(|other| {
                !same(other, certificate) && other.subject_name() == certificate.issuer_name()
            })
        })
        .map(|certificate| (*certificate).clone())
        .collect()
}

fn same(a: &CapturedX509Certificate, b: &CapturedX509Certificate) -> bool {
    a.constructed_data() == b.constructed_data()
}

/// Whether the certificate's basic constraints say it is a CA.
pub(crate) fn is_ca(certificate: &CapturedX509Certificate) -> bool {
    x509_cert::Certificate::from_der(certificate.constructed_data())
        .ok()
        .and_then(|c| c.tbs_certificate.get::<BasicConstraints>().ok().flatten())
        .is_some_and(|(_, constraints)| constraints.ca)
}

fn check_validity(certificate: &CapturedX509Certificate, at: SystemTime) -> Result<(), ChainError> {
    let at = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    let not_before = certificate.validity_not_before().timestamp();
    let not_after = certificate.validity_not_after().timestamp();
    if at < not_before || at > not_after {
        return Err(ChainError::NotValid {
            certificate: describe_certificate(certificate),
            not_before,
            not_after,
        });
    }
    Ok(())
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::{KeyKind, TestPki};

    fn certificate(der: &[u8]) -> CapturedX509Certificate {
        CapturedX509Certificate::from_der(der.to_vec()).unwrap()
    }

    #[test]
    fn a_leaf_chains_to_its_own_root_only_and_only_while_valid() {
        let pki = TestPki::generate(KeyKind::EcdsaP256);
        let leaf = certificate(&pki.code_signing.der);
        let ca = certificate(&pki.ca.der);
        let tsa_ca = certificate(&pki.tsa_ca.der);
        let now = SystemTime::now();
        check_chain(&leaf, &[], Anchors::Roots(std::slice::from_ref(&ca)), now).unwrap();
        check_chain(&leaf, &[], Anchors::Roots(std::slice::from_ref(&leaf)), now).unwrap();
        assert!(matches!(
            check_chain(
                &leaf,
                &[],
                Anchors::Roots(std::slice::from_ref(&tsa_ca)),
                now
            ),
            Err(ChainError::Untrusted { .. })
        ));
        // The root carried instead of trusted does not help.
        let carried = std::slice::from_ref(&ca);
        assert!(matches!(
            check_chain(
                &leaf,
                carried,
                Anchors::Roots(std::slice::from_ref(&tsa_ca)),
                now
            ),
            Err(ChainError::Untrusted { .. })
        ));
        // Trusting what is carried: the carried root is the top, and the walk still checks
        // the leaf's signature by it; a leaf alone is its own top.
        check_chain(&leaf, carried, Anchors::Carried, now).unwrap();
        check_chain(&leaf, &[], Anchors::Carried, now).unwrap();
        // Carried or not, validity is still checked.
        assert!(matches!(
            check_chain(&leaf, carried, Anchors::Carried, SystemTime::UNIX_EPOCH),
            Err(ChainError::NotValid { .. })
        ));
        let long_ago = SystemTime::UNIX_EPOCH;
        assert!(matches!(
            check_chain(&leaf, &[], Anchors::Roots(&[ca]), long_ago),
            Err(ChainError::NotValid { .. })
        ));
        assert!(is_ca(&tsa_ca) && !is_ca(&leaf));
    }
}
