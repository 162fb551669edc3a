//! Network interfaces: lookups by name and index, up/down, MTU.

use rtnetlink::packet_core::NLM_F_DUMP;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{Error, Kernel};

/// An interface as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Maximum transmission unit.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub lower_up: bool,
}

impl Link {
    fn from_message(m: LinkMessage) -> Self {
        let mut link = Self {
            index: m.header.index,
            name: String::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            lower_up: m.header.flags.contains(LinkFlags::LowerUp),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                _ => {}
            }
        }
        link
    }
}

/// The `RTM_SETLINK` body changing only the up flag of `index`.
pub fn set_up_message(index: u32, up: bool) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
    m
}

/// The `RTM_SETLINK` body changing only the MTU of `index`.
pub fn set_mtu_message(index: u32, mtu: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    m
}

impl Kernel {
    /// Every interface.
    pub async fn links(&self) -> Result<Vec<Link>, Error> {
        let dump = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
                || "ip link show".to_owned(),
            )
            .await?;
        Ok(dump
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The interface named `name`.
    pub async fn link_by_name(&self, name: &str) -> Result<Link, Error> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let answer = self
            .request(RouteNetlinkMessage::GetLink(query), 0, || {
                format!("ip link show {name}")
            })
            .await;
        match answer {
            Err(e) if e.errno() == Some(libc::ENODEV) => {
                Err(Error::NoSuchInterface(name.to_owned()))
            }
            answer => first_link(answer?).ok_or_else(|| Error::NoSuchInterface(name.to_owned())),
        }
    }

    /// The interface with index `index`.
    pub async fn link_by_index(&self, index: u32) -> Result<Link, Error> {
        let mut query = LinkMessage::default();
        query.header.index = index;
        let answer = self
            .request(RouteNetlinkMessage::GetLink(query), 0, || {
                format!("ip link show index {index}")
            })
            .await?;
        first_link(answer).ok_or_else(|| Error::NoSuchInterface(format!("#{index}")))
    }

    /// The index of the interface named `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, Error> {
        Ok(self.link_by_name(name).await?.index)
    }

    /// Brings interface `index` up or down.
    pub async fn set_link_up(&self, index: u32, up: bool) -> Result<(), Error> {
        let m = set_up_message(index, up);
        self.request(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("ip link set #{index} {}", if up { "up" } else { "down" })
        })
        .await
        .map(drop)
    }

    /// Sets the MTU of interface `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), Error> {
        let m = set_mtu_message(index, mtu);
        self.request(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("ip link set #{index} mtu {mtu}")
        })
        .await
        .map(drop)
    }
}

fn first_link(answer: Vec<RouteNetlinkMessage>) -> Option<Link> {
    answer.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_messages_touch_only_what_they_change() {
        let m = set_up_message(4, true);
        assert_eq!(m.header.index, 4);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        let m = set_up_message(4, false);
        assert!(m.header.flags.is_empty());
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        let m = set_mtu_message(9, 1400);
        assert!(m.header.change_mask.is_empty());
        assert_eq!(m.attributes, [LinkAttribute::Mtu(1400)]);
    }
}
