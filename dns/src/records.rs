//! The view's records as hickory records, and the zone's SOA.

use std::str::FromStr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record};

use crate::view::Rec;

pub fn name(text: &str) -> Option<Name> {
    Name::from_str(text).ok()
}

pub fn to_record(owner: &Name, ttl: u32, rec: &Rec) -> Option<Record> {
    let rdata = match rec {
        Rec::A(ip) => RData::A(A(*ip)),
        Rec::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        // Weight as CoreDNS gives one target alone: 100.
        Rec::Srv(port, target) => RData::SRV(SRV::new(0, 100, *port, name(target)?)),
        Rec::Cname(target) => RData::CNAME(CNAME(name(target)?)),
        Rec::Ptr(target) => RData::PTR(PTR(name(target)?)),
        Rec::Txt(text) => RData::TXT(TXT::new(vec![text.clone()])),
    };
    Some(Record::from_rdata(owner.clone(), ttl, rdata))
}

/// The zone's SOA (what CoreDNS's kubernetes plugin serves): negative
/// answers carry it so resolvers cache them for `ttl`.
pub fn soa(domain: &str, ttl: u32) -> Record {
    let zone = name(domain).unwrap_or_else(Name::root);
    let mname = name(&format!("ns.dns.{domain}")).unwrap_or_else(Name::root);
    let rname = name(&format!("hostmaster.{domain}")).unwrap_or_else(Name::root);
    Record::from_rdata(
        zone,
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, ttl)),
    )
}
