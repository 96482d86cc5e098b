//! Which addresses a fetch may reach. Link-local addresses (169.254.0.0/16, fe80::/10) and the
//! cloud metadata endpoints on them (169.254.169.254, AWS's fd00:ec2::254) hand out node and
//! cloud credentials, so a FusedModel URI must not point there unless the operator allows it:
//! literal addresses are checked before a request (and on every redirect), names when they are
//! resolved (the client's resolver drops such addresses, so a name cannot be re-pointed
//! between a check and the connection). It must not make requests itself.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::error::FetchError;

/// AWS's IPv6 instance metadata address.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Whether `ip` is link-local or a metadata address.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6 == AWS_METADATA_V6
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// Whether requests may go to link-local and metadata addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddressPolicy {
    /// `--allow-link-local`.
    pub allow_link_local: bool,
}

impl AddressPolicy {
    /// Refuses a URL whose host is a forbidden literal address.
    pub fn check_url(self, url: &Url) -> Result<(), FetchError> {
        if self.allow_link_local {
            return Ok(());
        }
        match literal_ip(url) {
            Some(ip) if forbidden(ip) => Err(refused(url.as_str(), ip)),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and refuses it when it resolves only to forbidden addresses.
    pub async fn check_host(self, url: &Url) -> Result<(), FetchError> {
        if self.allow_link_local || literal_ip(url).is_some() {
            return self.check_url(url);
        }
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let Ok(addresses) = tokio::net::lookup_host((host, port)).await else {
            // The request itself reports the DNS failure.
            return Ok(());
        };
        let addresses: Vec<SocketAddr> = addresses.collect();
        match addresses.iter().find(|a| forbidden(a.ip())) {
            Some(bad) if addresses.iter().all(|a| forbidden(a.ip())) => {
                Err(refused(url.as_str(), bad.ip()))
            }
            _ => Ok(()),
        }
    }

    /// The DNS resolver the HTTP client uses: the system's, without forbidden addresses.
    pub fn resolver(self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver(self))
    }
}

/// The host of `url` when it is an IP address (`[…]` for IPv6).
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn refused(location: &str, ip: IpAddr) -> FetchError {
    FetchError::ForbiddenAddress {
        location: location.to_owned(),
        address: ip.to_string(),
    }
}

/// A resolver that drops link-local and metadata addresses (unless allowed).
#[derive(Debug)]
pub struct GuardedResolver(AddressPolicy);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| policy.allow_link_local || !forbidden(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{} resolves only to link-local or metadata addresses (refused)",
                    name.as_str()
                )
                .into());
            }
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_addresses_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden(bad.parse().expect("an address")), "{bad}");
        }
        for good in ["127.0.0.1", "10.0.0.1", "8.8.8.8", "::1", "fd00:ec2::253"] {
            assert!(!forbidden(good.parse().expect("an address")), "{good}");
        }
        let policy = AddressPolicy::default();
        let metadata = Url::parse("http://169.254.169.254/latest/meta-data/").expect("url");
        let error = policy.check_url(&metadata).expect_err("refused");
        assert_eq!(error.reason(), "ArtifactForbiddenAddress");
        let v6 = Url::parse("http://[fd00:ec2::254]/latest").expect("url");
        assert!(policy.check_url(&v6).is_err());
        let allowed = AddressPolicy {
            allow_link_local: true,
        };
        assert!(allowed.check_url(&metadata).is_ok());
    }
}
