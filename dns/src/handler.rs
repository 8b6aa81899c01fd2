//! The hickory-server request handler: cluster names from the view,
//! everything else through the forwarder.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::{Cached, Forwarder, Outcome};
use crate::metrics::{Metrics, QueryLabels};
use crate::records;
use crate::view::{Answer, QType, View};

#[derive(Clone)]
pub struct Handler {
    pub view: Arc<RwLock<View>>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Arc<Metrics>,
    pub ttl: u32,
    /// Who may have other names forwarded.
    pub recursion: Arc<crate::recursion::Recursion>,
}

fn qtype_of(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::CNAME => QType::Cname,
        RecordType::PTR => QType::Ptr,
        RecordType::TXT => QType::Txt,
        RecordType::SOA => QType::Soa,
        RecordType::NS => QType::Ns,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

/// Metric labels of an answer from its question type and rcode numbers.
pub(crate) fn labels(qtype: u16, rcode: u8) -> QueryLabels {
    QueryLabels {
        r#type: RecordType::from(qtype).to_string(),
        rcode: rcode_name(ResponseCode::from(0, rcode)).to_string(),
    }
}

/// The rcode's mnemonic, as CoreDNS labels its metrics.
fn rcode_name(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

/// The sections of one answer.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Handler {
    fn answer_from_view(&self, qname: &str, qtype: RecordType) -> Option<Reply> {
        let view = self.view.read().expect("view lock");
        let domain = view.domain().to_string();
        let answer = view.answer(qname, qtype_of(qtype));
        drop(view);
        let owner = records::name(qname)?;
        let soa = || vec![records::soa(&domain, self.ttl)];
        let reply = |code, answers, authorities| Reply {
            code,
            authoritative: true,
            answers,
            authorities,
        };
        Some(match answer {
            Answer::NotOurs => return None,
            Answer::Records(recs) => reply(
                ResponseCode::NoError,
                recs.iter()
                    .filter_map(|r| records::to_record(&owner, self.ttl, r))
                    .collect(),
                Vec::new(),
            ),
            Answer::NoData if qtype == RecordType::SOA && qname.eq_ignore_ascii_case(&domain) => {
                reply(ResponseCode::NoError, soa(), Vec::new())
            }
            Answer::NoData => reply(ResponseCode::NoError, Vec::new(), soa()),
            Answer::NxDomain => reply(ResponseCode::NXDomain, Vec::new(), soa()),
        })
    }
}

impl Handler {
    /// The answer to a request, and the query type for the metrics ("-"
    /// when the request is not a readable query).
    async fn resolve(&self, request: &Request) -> (String, Result<Reply, ResponseCode>) {
        let meta = &request.metadata;
        if meta.message_type != MessageType::Query {
            return ("-".into(), Err(ResponseCode::FormErr));
        }
        if meta.op_code != OpCode::Query {
            return ("-".into(), Err(ResponseCode::NotImp));
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return ("-".into(), Err(ResponseCode::BADVERS));
        }
        let Ok(info) = request.request_info() else {
            return ("-".into(), Err(ResponseCode::FormErr));
        };
        let query = info.query.original().clone();
        let label = query.query_type().to_string();
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            return (label, Err(ResponseCode::Refused));
        }
        if let Some(reply) = self.answer_from_view(&query.name().to_ascii(), query.query_type()) {
            return (label, Ok(reply));
        }
        if !self.recursion.allows(request.src().ip()) {
            return (label, Err(ResponseCode::Refused));
        }
        let forwarded = |c: Cached| Reply {
            code: c.code,
            authoritative: false,
            answers: c.answers,
            authorities: c.authorities,
        };
        let reply = match self.forwarder.resolve(&query).await {
            Outcome::Hit(c) => {
                self.metrics.cache_hits.inc();
                Ok(forwarded(c))
            }
            Outcome::Miss(c) => {
                self.metrics.cache_misses.inc();
                Ok(forwarded(c))
            }
            Outcome::Failed => {
                self.metrics.forward_failures.inc();
                Err(ResponseCode::ServFail)
            }
            Outcome::Refused => Err(ResponseCode::Refused),
        };
        (label, reply)
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let (type_label, reply) = self.resolve(request).await;
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let (code, sent) = match &reply {
            Ok(r) => {
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = r.code;
                meta.authoritative = r.authoritative;
                meta.recursion_available = true;
                let response = builder.build(
                    meta,
                    r.answers.iter(),
                    r.authorities.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                (r.code, response_handle.send_response(response).await)
            }
            Err(code) => {
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = *code;
                let response = builder.build_no_records(meta);
                (*code, response_handle.send_response(response).await)
            }
        };
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                r#type: type_label,
                rcode: rcode_name(code).to_string(),
            })
            .inc();
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match sent {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response failed");
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
