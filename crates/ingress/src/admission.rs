//! Admission: everything between an authenticated request and the bus, the
//! same for every client API and for batch items. A request's body of one
//! surface is parsed and validated into the canonical request, classified
//! (client hints first), routed (a router's decision or a named model's fixed
//! order), shed when its targets cannot serve it in time, and built into the
//! envelope to publish. Later steps (tenancy, limits, budgets, caching) plug
//! in here, in this order.

use sy_config::ModelRoute;
use sy_protocol::{ApiSurface, ErrorCode, FallbackTarget, RequestEnvelope, RouteChoice};
use uuid::Uuid;

pub(crate) use crate::classify::Hints;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;
use crate::surface::chat::parse_chat;
use crate::surface::{embeddings, images, messages, rerank, responses};
use crate::validate::validate_chat;
use crate::{classify, route, validate};

/// A request to admit, whoever sends it (an HTTP client or a batch's
/// dispatcher): the caller, the client's hints, the times, and for a batch
/// item its place in the batch. Nothing of HTTP.
pub(crate) struct Admission<'a> {
    pub request_id: Uuid,
    /// Who is asking: the key, and what it may do.
    pub caller: &'a Caller,
    /// What the client said about the request besides its body.
    pub hints: Hints<'a>,
    pub received_unix_ms: u64,
    pub deadline_unix_ms: u64,
    /// Set for a batch item: routed the same way, but not shed (it waits in
    /// its own queue) and answered on the batch's result subject.
    pub batch: Option<sy_protocol::batch::BatchItem>,
}

/// Where a request goes: the route that chose, its targets in order, and
/// the policy they run under.
struct Decision {
    /// The model or router the client named.
    route_name: String,
    /// `x-switchyard-route`: the model's name, or the route chosen inside a router.
    route_header: String,
    /// The chosen target first, then the fallbacks.
    targets: Vec<FallbackTarget>,
    choice: RouteChoice,
    policy: sy_config::RoutePolicy,
}

/// A request parsed, validated, classified and routed, ready to publish.
pub(crate) struct Admitted {
    pub envelope: RequestEnvelope,
    pub class: Option<sy_classifier::Class>,
    pub route_header: String,
    /// Embeddings answered as base64.
    pub base64: bool,
    /// Where the client reached this ingress (`scheme://host`), for links
    /// back to it; none for a batch item or a pipeline's step.
    pub origin: Option<String>,
}

/// Parses, validates, classifies and routes a body of `surface`: everything the
/// ingress does before it publishes ([`parse`], the key's model scope, then
/// [`admit_parsed`], as the HTTP flow and the batch dispatcher do them, a
/// pipeline's model in between).
#[cfg(test)]
pub(crate) fn admit(
    state: &AppState,
    surface: ApiSurface,
    body: &[u8],
    admission: Admission<'_>,
) -> Result<Admitted, (ApiError, Option<sy_classifier::Class>)> {
    let (request, payload) = parse(surface, body).map_err(|e| (e, None))?;
    admission
        .caller
        .may_use(&request.model)
        .map_err(|e| (e, None))?;
    admit_parsed(state, surface, request, payload, admission)
}

/// What a request asks besides a chat: none for chat (every chat surface
/// reads into the canonical [`ChatRequest`](sy_protocol::chat::ChatRequest)).
#[derive(Debug)]
pub(crate) enum Payload {
    Embeddings(sy_protocol::embeddings::EmbeddingsRequest),
    Rerank(sy_protocol::rerank::RerankRequest),
    Images(sy_protocol::images::ImagesRequest),
    Transcription(sy_protocol::audio::TranscriptionRequest),
    Speech(sy_protocol::audio::SpeechRequest),
}

impl Payload {
    /// What a model must serve to take it (the config's `serves`).
    pub(crate) fn kind(payload: Option<&Payload>) -> &'static str {
        match payload {
            None => "chat",
            Some(Payload::Embeddings(_)) => "embeddings",
            Some(Payload::Rerank(_)) => "rerank",
            Some(Payload::Images(_)) => "images",
            Some(Payload::Transcription(_)) => "transcriptions",
            Some(Payload::Speech(_)) => "speech",
        }
    }

    /// What a router compares: the request's kind and its estimated size
    /// (tokens at four bytes each, and the units a per-unit price bills);
    /// none for chat, whose estimate reads every message and is made only
    /// when a router asks ([`route::Size::chat`]).
    pub(crate) fn size(payload: Option<&Payload>) -> Option<route::Size> {
        use sy_protocol::price::Units;
        let tokens = |s: &str| s.len() as u64 / 4 + 1;
        let mut output_tokens = 0;
        let (input_tokens, units) = match payload {
            None => return None,
            Some(Payload::Embeddings(e)) => (e.input.estimated_tokens(), Units::default()),
            Some(Payload::Rerank(r)) => (
                r.estimated_tokens(),
                Units {
                    search_units: r.estimated_search_units(4),
                    ..Units::default()
                },
            ),
            Some(Payload::Images(i)) => {
                output_tokens = i.expected_output_tokens();
                (
                    tokens(&i.prompt),
                    Units {
                        output_images: u64::from(i.count()),
                        ..Units::default()
                    },
                )
            }
            Some(Payload::Transcription(t)) => (
                0,
                Units {
                    audio_seconds: t.most_seconds(),
                    ..Units::default()
                },
            ),
            Some(Payload::Speech(s)) => (
                tokens(&s.input),
                Units {
                    characters: s.characters(),
                    ..Units::default()
                },
            ),
        };
        Some(route::Size {
            kind: Payload::kind(payload),
            input_tokens,
            output_tokens,
            units,
        })
    }
}

/// A body of `surface` as the canonical request (and, for the APIs that are
/// no chat, their own request), validated.
pub(crate) fn parse(
    surface: ApiSurface,
    body: &[u8],
) -> Result<(sy_protocol::chat::ChatRequest, Option<Payload>), ApiError> {
    match surface {
        ApiSurface::Embeddings => {
            validate::check_depth(body)?;
            let e = embeddings::parse(body)?;
            Ok((
                sy_protocol::chat::ChatRequest::model_only(&e.model),
                Some(Payload::Embeddings(e)),
            ))
        }
        ApiSurface::Rerank => {
            let r = rerank::parse(body)?;
            Ok((
                sy_protocol::chat::ChatRequest::model_only(&r.model),
                Some(Payload::Rerank(r)),
            ))
        }
        ApiSurface::Images => {
            let i = images::parse(body)?;
            Ok((
                sy_protocol::chat::ChatRequest::model_only(&i.model),
                Some(Payload::Images(i)),
            ))
        }
        ApiSurface::Speech => {
            let s = crate::surface::audio::parse_speech(body)?;
            Ok((
                sy_protocol::chat::ChatRequest::model_only(&s.model),
                Some(Payload::Speech(s)),
            ))
        }
        // Multipart: read by `surface::audio::parse` and
        // `surface::images::parse_edit`, not here.
        ApiSurface::Transcriptions | ApiSurface::Translations | ApiSurface::ImageEdits => {
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "Send the body as multipart/form-data.",
            ))
        }
        _ => Ok((parse_request(surface, body)?, None)),
    }
}

/// The targets that serve `kind` (`chat`, `embeddings`, `rerank`): a target whose
/// upstream model declares `serves` without it is no candidate (one that
/// declares nothing serves anything, as before `serves`); none left is a
/// 400 naming what the model serves, before any provider is called.
fn serving(
    state: &AppState,
    model: &str,
    targets: Vec<FallbackTarget>,
    kind: &str,
) -> Result<Vec<FallbackTarget>, ApiError> {
    let declared = |t: &FallbackTarget| {
        state
            .providers
            .get(&t.provider)
            .and_then(|p| p.models.get(&t.upstream_model))
            .and_then(|m| m.serves.as_deref())
    };
    if targets
        .iter()
        .all(|t| declared(t).is_none_or(|s| s.iter().any(|w| w == kind)))
    {
        return Ok(targets);
    }
    let mut serves: Vec<&str> = targets
        .iter()
        .flat_map(|t| declared(t).unwrap_or_default())
        .map(String::as_str)
        .collect();
    serves.sort_unstable();
    serves.dedup();
    let kept: Vec<FallbackTarget> = targets
        .iter()
        .filter(|t| declared(t).is_none_or(|s| s.iter().any(|w| w == kind)))
        .cloned()
        .collect();
    if kept.is_empty() {
        return Err(ApiError::invalid(
            "model",
            format!(
                "The model '{model}' does not serve {kind} requests; it serves {}.",
                serves.join(", ")
            ),
        ));
    }
    Ok(kept)
}

/// [`admit`] for a request parsed already whose caller may use its model
/// (checked by the caller: a pipeline's steps run under the pipeline's grant).
pub(crate) fn admit_parsed(
    state: &AppState,
    surface: ApiSurface,
    request: sy_protocol::chat::ChatRequest,
    payload: Option<Payload>,
    admission: Admission<'_>,
) -> Result<Admitted, (ApiError, Option<sy_classifier::Class>)> {
    let Admission {
        request_id,
        caller,
        hints,
        received_unix_ms,
        deadline_unix_ms,
        batch,
    } = admission;
    let kind = Payload::kind(payload.as_ref());
    let size = Payload::size(payload.as_ref());
    let (mut embeddings, mut rerank, mut images, mut transcription, mut speech) =
        (None, None, None, None, None);
    match payload {
        None => {}
        Some(Payload::Embeddings(e)) => embeddings = Some(e),
        Some(Payload::Rerank(r)) => rerank = Some(r),
        Some(Payload::Images(i)) => images = Some(i),
        Some(Payload::Transcription(t)) => transcription = Some(t),
        Some(Payload::Speech(s)) => speech = Some(s),
    }
    let base64 = embeddings
        .as_ref()
        .is_some_and(|e| e.encoding_format.as_deref() == Some("base64"));
    let class = if kind != "chat" {
        None
    } else {
        Some(
            classify::decide(&state.classifier, &hints, &request)
                .map_err(|e| (e, None))?
                .class,
        )
    };
    // Tags, from the header and the body's metadata (validated: a 400 here);
    // a router's routes may require some.
    let defaults = caller.grant.as_ref().map_or(&[][..], |g| &g.tags[..]);
    let tags = crate::tags::of(hints.tags, Some(&request), defaults).map_err(|e| (e, class))?;
    let decision =
        decide(state, &request, class, size, request_id, &tags).map_err(|e| (e, class))?;
    let Decision {
        route_name,
        route_header,
        targets,
        choice,
        policy,
    } = decision;
    let targets = serving(state, &route_name, targets, kind).map_err(|e| (e, class))?;
    // Load shedding: skip targets whose queue is full or too slow for the
    // deadline. (Batch items wait in their own queue and are not shed.)
    let (first, fallback) = if batch.is_some() {
        let mut targets = targets.into_iter();
        let Some(first) = targets.next() else {
            return Err((
                ApiError::new(ErrorCode::Internal, "a route without targets"),
                class,
            ));
        };
        (first, targets.collect())
    } else {
        route::shed(state, targets).map_err(|e| (e, class))?
    };
    let (provider, model) = (first.provider, first.upstream_model);
    let choice = RouteChoice {
        rank: first.rank,
        ..choice
    };
    let reply_to = match &batch {
        Some(_) => String::new(),
        None => state.bus.subjects().reply(&state.ingress_id, request_id),
    };
    // What the provider sees of the client's identities is per tenant.
    let mut request = request;
    let scope = || match &caller.grant {
        Some(g) => g.owner.org_id.to_string(),
        None => format!("key:{}", caller.key_id),
    };
    if let Some(user) = images.as_mut().and_then(|i| i.user.as_mut()) {
        *user = crate::pseudonym::pseudonym(&state.identity_secret, &scope(), user);
    }
    crate::pseudonym::apply(
        &state.identity_secret,
        scope,
        &mut request,
        embeddings.as_mut(),
    );
    let mut envelope = RequestEnvelope {
        request_id,
        attempt: 1,
        ingress_id: state.ingress_id.clone(),
        reply_to,
        received_unix_ms,
        deadline_unix_ms,
        key_id: caller.key_id.clone(),
        org_id: caller.grant.as_ref().map(|g| g.owner.org_id.to_string()),
        project_id: caller
            .grant
            .as_ref()
            .map(|g| g.owner.project_id.to_string()),
        api: surface,
        model: route_name,
        provider,
        upstream_model: model,
        request,
        embeddings,
        rerank,
        images,
        transcription,
        speech,
        class: class.map(|c| c.as_str().to_owned()),
        choice: Some(choice),
        fallback,
        fallback_reason: None,
        mid_stream: policy.mid_stream,
        resume: None,
        fallback_on_refusal: policy.fallback_on_refusal,
        watchdogs: policy.watchdogs,
        batch,
        limits: None,
        pricing: None,
        tags,
        pipeline: None,
        timing: false,
    };
    crate::pricing::price_targets(state, caller, &mut envelope);
    Ok(Admitted {
        envelope,
        class,
        route_header,
        base64,
        origin: None,
    })
}

/// Chooses the route and the order of its targets: a router's decision
/// (by class, strategy and live state), or a named model's fixed order.
fn decide(
    state: &AppState,
    request: &sy_protocol::chat::ChatRequest,
    class: Option<sy_classifier::Class>,
    size: Option<route::Size>,
    request_id: Uuid,
    tags: &[(String, String)],
) -> Result<Decision, ApiError> {
    let routing = state.routing();
    let Some(router) = routing.routers.get(&request.model) else {
        let route = resolve(&routing, &request.model)?;
        let targets = route::fixed_order(state, route);
        let rank = targets.first().map_or(1, |t| t.rank);
        return Ok(Decision {
            route_name: route.name.clone(),
            route_header: route.name.clone(),
            targets,
            choice: RouteChoice {
                route: String::new(),
                strategy: "fixed".into(),
                rank,
            },
            policy: route.policy,
        });
    };
    let size = size.unwrap_or_else(|| route::Size::chat(request));
    let decision = route::decide(state, router, request, class, &size, request_id, tags);
    if decision.route.is_empty() {
        return Err(route::no_route(router, size.kind));
    }
    let Some(chosen) = decision.chosen() else {
        let why: Vec<String> = decision
            .candidates
            .iter()
            .map(|c| {
                format!(
                    "{}/{}: {}",
                    c.provider,
                    c.model,
                    c.skipped.as_deref().unwrap_or("?")
                )
            })
            .collect();
        return Err(ApiError {
            retry_after_secs: Some(1),
            ..ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "No target of route '{}' can serve this request now ({}).",
                    decision.route,
                    why.join("; ")
                ),
            )
        });
    };
    let choice = RouteChoice {
        route: decision.route.clone(),
        strategy: decision.strategy.to_owned(),
        rank: decision.order.first().map_or(1, |i| *i as u32 + 1),
    };
    let targets = std::iter::once(FallbackTarget {
        provider: chosen.provider.clone(),
        upstream_model: chosen.model.clone(),
        rank: choice.rank,
        pricing: None,
    })
    .chain(decision.order[1..].iter().map(|&i| FallbackTarget {
        provider: decision.candidates[i].provider.clone(),
        upstream_model: decision.candidates[i].model.clone(),
        rank: i as u32 + 1,
        pricing: None,
    }))
    .collect();
    Ok(Decision {
        route_name: router.name.clone(),
        route_header: decision.route.clone(),
        targets,
        choice,
        policy: router.policy,
    })
}

/// Parses and validates a body of `surface` into the canonical request.
pub(crate) fn parse_request(
    surface: ApiSurface,
    body: &[u8],
) -> Result<sy_protocol::chat::ChatRequest, ApiError> {
    validate::check_depth(body)?;
    let request = match surface {
        ApiSurface::Messages => messages::parse(body)?,
        ApiSurface::Responses => responses::parse(body)?,
        _ => parse_chat(body)?,
    };
    validate_chat(&request)?;
    Ok(request)
}

fn resolve<'a>(
    routing: &'a crate::state::Routing,
    model: &str,
) -> Result<&'a ModelRoute, ApiError> {
    routing.models.get(model).ok_or_else(|| ApiError {
        param: Some("model".into()),
        ..ApiError::new(
            ErrorCode::ModelNotFound,
            format!("The model '{model}' does not exist or you do not have access to it."),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sy_config::{Config, MapEnv};
    use sy_protocol::batch::BatchItem;

    use super::*;

    /// An ingress state on a fresh namespace of the test NATS, with a named
    /// model of two targets and a router.
    async fn state() -> Arc<AppState> {
        let ns = sy_test_support::unique_namespace();
        let config = Config::from_toml(
            &format!(
                r#"
[nats]
url = "{url}"
namespace = "{ns}"

[providers.openai]
kind = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"

[providers.anthropic]
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"

[providers.openai.models."gpt-4o-mini"]
context_window = 128000

[models."chain"]
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}, {{ provider = "anthropic", model = "claude-sonnet-4-5" }}]

[routers.auto]
strategy = "cheapest"

[[routers.auto.routes]]
name = "code"
classes = ["code"]
targets = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}, {{ provider = "openai", model = "gpt-4o-mini" }}]

[[routers.auto.routes]]
name = "rest"
targets = [{{ provider = "openai", model = "gpt-4o-mini" }}]
"#,
                url = sy_test_support::nats_url()
            ),
            &MapEnv::default(),
        )
        .unwrap();
        let bus = sy_bus::Bus::from_client(sy_test_support::nats().await, &config.nats);
        crate::build(Arc::new(config), bus).await.unwrap().1
    }

    fn file_key() -> &'static Caller {
        Box::leak(Box::new(Caller {
            key_id: "test".into(),
            grant: None,
        }))
    }

    fn admission<'a>(hints: Hints<'a>, batch: Option<BatchItem>) -> Admission<'a> {
        Admission {
            request_id: Uuid::now_v7(),
            caller: file_key(),
            hints,
            received_unix_ms: 1_000,
            deadline_unix_ms: 61_000,
            batch,
        }
    }

    const CHAT: &[u8] = br#"{"model": "chain", "messages": [{"role": "user", "content": "hi"}]}"#;

    #[tokio::test]
    async fn a_named_model_goes_to_its_first_target_with_the_rest_as_fallbacks() {
        let state = state().await;
        let a = admit(
            &state,
            ApiSurface::ChatCompletions,
            CHAT,
            admission(Hints::default(), None),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        let env = &a.envelope;
        assert_eq!(
            (
                env.model.as_str(),
                env.provider.as_str(),
                env.upstream_model.as_str()
            ),
            ("chain", "openai", "gpt-4o-mini")
        );
        assert_eq!(env.fallback.len(), 1);
        assert_eq!(env.fallback[0].provider, "anthropic");
        assert_eq!(env.choice.as_ref().unwrap().strategy, "fixed");
        assert_eq!(a.route_header, "chain");
        assert!(
            env.reply_to
                .contains(&env.request_id.as_simple().to_string())
        );
        assert_eq!(env.deadline_unix_ms, 61_000);
    }

    #[tokio::test]
    async fn a_router_routes_by_the_class_a_hint_names() {
        let state = state().await;
        let body = br#"{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}"#;
        let hints = Hints {
            class: Some("code"),
            task_type: None,
            tags: None,
        };
        let a = admit(
            &state,
            ApiSurface::ChatCompletions,
            body,
            admission(hints, None),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        assert_eq!(a.class, Some(sy_classifier::Class::Code));
        let env = &a.envelope;
        assert_eq!(env.model, "auto");
        assert_eq!(a.route_header, "code");
        assert_eq!(env.choice.as_ref().unwrap().route, "code");
        assert_eq!(env.class.as_deref(), Some("code"));
        // A hint that names no class is the client's error.
        let bad = Hints {
            class: Some("poetry"),
            task_type: None,
            tags: None,
        };
        let (e, _) = admit(
            &state,
            ApiSurface::ChatCompletions,
            body,
            admission(bad, None),
        )
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some(sy_protocol::header::CLASS));
    }

    #[tokio::test]
    async fn a_batch_item_is_admitted_without_any_http_and_answered_on_its_batch() {
        let state = state().await;
        let item = BatchItem {
            batch_id: "batch_1".into(),
            index: 3,
            custom_id: "c3".into(),
        };
        let a = admit(
            &state,
            ApiSurface::ChatCompletions,
            CHAT,
            admission(Hints::default(), Some(item.clone())),
        )
        .map_err(|(e, _)| e)
        .unwrap();
        let env = &a.envelope;
        assert_eq!(env.batch.as_ref(), Some(&item));
        assert!(
            env.reply_to.is_empty(),
            "a batch item's answer goes to its batch"
        );
        assert_eq!(env.provider, "openai");
    }

    #[tokio::test]
    async fn a_tenants_key_names_its_owner_and_is_held_to_its_scope() {
        let state = state().await;
        let owner = sy_control::store::KeyOwner {
            key_id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            org_id: Uuid::now_v7(),
        };
        let grant = sy_control::keytable::Grant {
            models: Some(vec!["auto".to_owned()].into()),
            ..sy_control::keytable::Grant::unrestricted(owner)
        };
        let caller = Caller {
            key_id: owner.key_id.to_string(),
            grant: Some(std::sync::Arc::new(grant)),
        };
        let admission = || Admission {
            caller: &caller,
            ..admission(Hints::default(), None)
        };
        let (e, class) = admit(&state, ApiSurface::ChatCompletions, CHAT, admission())
            .err()
            .unwrap();
        assert_eq!(e.code, ErrorCode::PermissionDenied);
        assert_eq!(e.status.as_u16(), 403);
        assert!(
            e.message.contains("'chain'") && e.message.contains("[auto]"),
            "{}",
            e.message
        );
        assert_eq!(class, None, "refused before it is classified");
        let body = br#"{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}"#;
        let a = admit(&state, ApiSurface::ChatCompletions, body, admission())
            .map_err(|(e, _)| e)
            .unwrap();
        let env = &a.envelope;
        assert_eq!(env.key_id, owner.key_id.to_string());
        assert_eq!(env.org_id, Some(owner.org_id.to_string()));
        assert_eq!(env.project_id, Some(owner.project_id.to_string()));
    }
}
