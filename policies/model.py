"""The release policy: one YAML file per release, validated by this pydantic model.

YAML keys are the camelCase aliases of the attribute names (`minDuration` for
`min_duration`); Python code may use either. Durations are float seconds in the model and
strings with a unit in YAML (see `policies.durations`). Rules that involve several fields
raise `RuleError`, which names the most specific field involved so that the loader can
point at it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from policies.durations import Duration, format_duration
from policies.errors import FieldPath, RuleError

__all__ = [
    "API_VERSION",
    "KIND",
    "LABEL_PATTERN",
    "METRIC_NAME_PATTERN",
    "RELEASE_NAME_PATTERN",
    "Analysis",
    "Approval",
    "ApprovalQueue",
    "CircuitBreaker",
    "Direction",
    "Metric",
    "MetricSource",
    "OnApprovalTimeout",
    "OnMaxDuration",
    "Policy",
    "PromptTarget",
    "Routing",
    "SampleRatio",
    "ScoreRange",
    "ScoreType",
    "Shadow",
    "Step",
    "Stickiness",
    "Target",
    "Upstreams",
    "policy_json_schema",
    "policy_json_schema_text",
]

API_VERSION: Final = "coalmine/v1"
KIND: Final = "Release"

RELEASE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
METRIC_NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]*$"
LABEL_PATTERN: Final = r"^[a-z0-9_.-]+$"
TOKEN_PATTERN: Final = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
METHOD_PATTERN: Final = r"^[A-Z]+$"
PATH_PREFIX_PATTERN: Final = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
URL_PATTERN: Final = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+[^?#\s]*$"

PATTERN_MESSAGES: Final = {
    RELEASE_NAME_PATTERN: (
        "must be lower-case letters, digits and '-', starting and ending with a letter or digit"
    ),
    METRIC_NAME_PATTERN: (
        "must be lower-case letters, digits, '_', '.' and '-', starting with a letter or digit"
    ),
    LABEL_PATTERN: "must be a Langfuse label: lower-case letters, digits, '_', '-' and '.'",
    TOKEN_PATTERN: "must be a header or cookie name: letters, digits and !#$%&'*+-.^_`|~",
    METHOD_PATTERN: "must be an upper-case HTTP method name such as POST",
    PATH_PREFIX_PATTERN: "must be a URL path starting with '/'",
}
"""Plain messages for the patterns above, used by the loader in place of the regex."""

LATENCY_DEFAULT_QUANTILE: Final = 0.95
STICKINESS_DEFAULT_HEADER: Final = "x-user-id"

Number = Annotated[float, Strict()]
Count = Annotated[int, Strict()]
Flag = Annotated[bool, Strict()]


def _check_url(value: str) -> str:
    message = "must be an http or https URL"
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise ValueError(message) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(message)
    if any(character.isspace() for character in value):
        raise ValueError(message)
    if "?" in value or "#" in value:
        raise ValueError(
            "must not have a query ('?') or fragment ('#'): the proxy appends each "
            "request's path and query to it"
        )
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(_check_url),
    WithJsonSchema({"type": "string", "format": "uri", "pattern": URL_PATTERN}),
]
"""An absolute http or https URL with a host, kept as the string the policy gave."""


def _duration_default(seconds: float) -> dict[str, Any]:
    """Schema extra that shows a duration default the way a policy spells it."""
    return {"default": format_duration(seconds)}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


def _rule(*violations: tuple[FieldPath, str]) -> RuleError:
    return RuleError(violations)


class Direction(StrEnum):
    """Which way is better for a metric."""

    HIGHER = "higher"
    LOWER = "lower"


class MetricSource(StrEnum):
    """Where a metric's per-trace values come from."""

    SCORE = "score"
    ERROR_RATE = "error_rate"
    COST = "cost"
    LATENCY = "latency"
    TRACE_ERROR_RATE = "trace_error_rate"

    @property
    def is_error_rate(self) -> bool:
        """A share of failures: ``error_rate`` of the requests (from the proxies' counts
        when they carry the traffic, else from the traces), ``trace_error_rate`` of the
        traces with an ERROR observation (always from the traces)."""
        return self in (MetricSource.ERROR_RATE, MetricSource.TRACE_ERROR_RATE)


class ScoreType(StrEnum):
    """The data type of a Langfuse score."""

    NUMERIC = "numeric"
    BOOLEAN = "boolean"
    CATEGORICAL = "categorical"


class OnApprovalTimeout(StrEnum):
    """What to do when no one approves a rollout within approval.timeout."""

    PAUSE = "pause"
    ROLLBACK = "rollback"


class OnMaxDuration(StrEnum):
    """What to do when a step reaches its maxDuration without a verdict."""

    PAUSE = "pause"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


class PromptTarget(_Model):
    """A Langfuse prompt: stable is the version holding stableLabel, canary canaryLabel."""

    name: str = Field(min_length=1)
    """The Langfuse prompt name."""

    stable_label: str = Field(default="production", pattern=LABEL_PATTERN, max_length=36)
    """The label on the stable version; promotion moves it to the canary version."""

    canary_label: str = Field(default="canary", pattern=LABEL_PATTERN, max_length=36)
    """The label on the candidate version; a rollback parks it on the stable version."""

    @field_validator("stable_label", "canary_label")
    @classmethod
    def _not_latest(cls, label: str) -> str:
        if label == "latest":
            raise ValueError("'latest' is managed by Langfuse and cannot be moved")
        return label

    @model_validator(mode="after")
    def _labels_differ(self) -> PromptTarget:
        if self.stable_label == self.canary_label:
            raise _rule((("canaryLabel",), f"must differ from stableLabel ('{self.stable_label}')"))
        return self


class Upstreams(_Model):
    """Agent versions as HTTP upstreams of the proxy."""

    stable: HttpUrl
    """URL of the stable version."""

    canary: HttpUrl | None = None
    """URL of the candidate version; absent when only the prompt changes."""


class Target(_Model):
    """What is released: a prompt, agent upstreams, or both."""

    prompt: PromptTarget | None = None
    """The Langfuse prompt whose labels the release moves."""

    upstreams: Upstreams | None = None
    """The agent versions the proxy routes between."""

    version: str | None = Field(default=None, min_length=1, max_length=200)
    """The agent candidate's version, as the deploy pipeline names it (an image tag, a
    commit). Changing it starts the next rollout of the release; without it a changed
    canary upstream does, or `coalmine start RELEASE`."""

    @model_validator(mode="after")
    def _something(self) -> Target:
        # an agent released through a Gateway API route has a version and Services
        # (checked with the routing, by Policy)
        if self.prompt is None and self.upstreams is None and self.version is None:
            raise _rule(((), "needs prompt or upstreams"))
        return self


class Stickiness(_Model):
    """The request key that keeps a user in one arm: a header or a cookie."""

    header: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    """Name of the request header that identifies the user or session."""

    cookie: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    """Name of the cookie that identifies the user or session."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Stickiness:
        if self.header is not None and self.cookie is not None:
            raise _rule(((), "set header or cookie, not both"))
        if self.header is None and self.cookie is None:
            raise _rule(((), "needs header or cookie"))
        return self


def _stickiness_schema(schema: dict[str, Any]) -> None:
    choices = schema["properties"]["stickiness"]["anyOf"]
    choices.insert(-1, {"const": "none", "description": "Assign every request afresh."})


class RoutingProvider(StrEnum):
    """What puts a release's canary weight and mirroring in force."""

    PROXY = "proxy"
    """coalmine's proxy, by the routing tables the controller writes."""
    GATEWAY_API = "gatewayApi"
    """A Kubernetes Gateway API HTTPRoute: one named rule of it, which coalmine owns."""
    NONE = "none"
    """Another system (Argo Rollouts, Flagger, a person): coalmine judges and moves
    labels, and never touches the traffic."""


DNS_LABEL: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ServiceRef(_Model):
    """A Kubernetes Service an HTTPRoute sends requests to."""

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """The Service's name."""

    port: Count = Field(ge=1, le=65535)
    """The Service's port."""


class GatewayApiRoute(_Model):
    """The HTTPRoute rule coalmine owns: it sets the rule's `backendRefs` and its
    `RequestMirror` filter, and never touches the route's other rules or fields."""

    http_route: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The HTTPRoute's name (gateway.networking.k8s.io/v1)."""

    namespace: str | None = Field(default=None, pattern=DNS_LABEL, max_length=63)
    """Its namespace; unset: the controller's."""

    rule: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """The `name` of the rule coalmine owns in it (the rule and its `matches` are yours
    to write; coalmine fills in where its requests go)."""

    stable: ServiceRef
    """The Service of the stable version."""

    canary: ServiceRef | None = None
    """The Service of the candidate (an agent release); unset: a prompt release, whose
    arms both go to `stable`, each with the arm and prompt-label headers set."""

    mirror: ServiceRef | None = None
    """Where `shadow` copies go (the Service of `shadow.upstream`'s deployment); needed
    when the policy has `shadow`."""


class Routing(_Model):
    """How requests are assigned to arms."""

    model_config = ConfigDict(json_schema_extra=_stickiness_schema)

    provider: RoutingProvider = RoutingProvider.PROXY
    """`proxy` (coalmine's proxy), `gatewayApi` (an HTTPRoute rule, `gatewayApi`) or
    `none` (another system moves the traffic); the fields after `gatewayApi` are the
    proxy's."""

    gateway_api: GatewayApiRoute | None = None
    """The HTTPRoute rule of `provider: gatewayApi`."""

    stickiness: Stickiness | None = Stickiness(header=STICKINESS_DEFAULT_HEADER)
    """`{header: NAME}`, `{cookie: NAME}` or `none` (no stickiness)."""

    path_prefix: str = Field(default="/", pattern=PATH_PREFIX_PATTERN)
    """Requests whose path starts with this prefix belong to this release; with several
    releases behind one proxy, the longest matching prefix wins."""

    connect_timeout: Duration = Field(default=5.0, gt=0, json_schema_extra=_duration_default(5))
    """Time allowed to open a connection to an upstream; past it the client gets 502."""

    read_timeout: Duration = Field(default=300.0, gt=0, json_schema_extra=_duration_default(300))
    """Longest wait for the next bytes of an upstream response (a token stream may pause
    between chunks); past it the client gets 504, or the stream ends if it had begun."""

    max_body_bytes: Count = Field(default=10 * 1024 * 1024, ge=1)
    """Requests with a larger body are refused with 413."""

    @field_validator("stickiness", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        if value == "none":
            return None
        if isinstance(value, str):
            raise ValueError("must be {header: NAME}, {cookie: NAME} or none")
        return value

    @model_validator(mode="after")
    def _gateway_api_with_its_provider(self) -> Routing:
        gateway = self.provider is RoutingProvider.GATEWAY_API
        if gateway and self.gateway_api is None:
            raise _rule((("gatewayApi",), "is required with provider gatewayApi"))
        if not gateway and self.gateway_api is not None:
            raise _rule((("gatewayApi",), "goes with provider gatewayApi"))
        return self


class Step(_Model):
    """One step of the rollout: the canary's share of traffic and how long to hold it."""

    weight: Number = Field(gt=0, le=100)
    """Percent of traffic sent to the canary during this step."""

    min_duration: Duration = Field(default=0.0, ge=0, json_schema_extra=_duration_default(0))
    """Time to hold this step before advancing, even when the analysis passes."""

    max_duration: Annotated[Duration, Field(gt=0)] | None = None
    """Time after which analysis.onMaxDuration applies if no verdict was reached."""

    min_samples: Count | None = Field(default=None, ge=1)
    """Samples per arm needed before advancing; overrides analysis.minSamples."""

    @model_validator(mode="after")
    def _durations_ordered(self) -> Step:
        if self.max_duration is not None and self.min_duration > self.max_duration:
            minimum = format_duration(self.min_duration)
            raise _rule((("maxDuration",), f"must be >= minDuration ({minimum})"))
        return self


class EventTarget(_Model):
    """The object in the controller's namespace that a release's Kubernetes Events are
    reported on (``kubectl describe`` lists them there)."""

    api_version: str = Field(default="apps/v1", min_length=1)
    """API version of the object, e.g. `apps/v1`."""

    kind: str = Field(default="Deployment", pattern=r"^[A-Z][A-Za-z0-9]*$")
    """Kind of the object, e.g. `Deployment`."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Name of the object."""


class Kubernetes(_Model):
    """How the release shows in Kubernetes when the controller runs in cluster mode."""

    event_target: EventTarget | None = None
    """Object to report the release's Events on; unset: the controller's own pod."""


class ScoreRange(_Model):
    """The range of a numeric score."""

    min: Number
    """Lowest possible value."""

    max: Number
    """Highest possible value."""

    @model_validator(mode="after")
    def _ordered(self) -> ScoreRange:
        if self.min >= self.max:
            raise _rule((("max",), f"must be greater than min ({_number(self.min)})"))
        return self


class SampleRatio(_Model):
    """The sample-ratio check: traffic split differing from the weights pauses a release."""

    alpha: Number = Field(default=0.001, gt=0, lt=0.5)
    """False-alarm rate of the sample-ratio test."""


class CircuitBreaker(_Model):
    """Roll back at once when the canary fails this often, without waiting for statistics."""

    error_rate: Number = Field(default=0.5, gt=0, le=1)
    """Canary error rate that trips the breaker."""

    min_requests: Count = Field(default=20, ge=1)
    """Canary requests needed before the breaker can trip."""


class Metric(_Model):
    """One metric compared between canary and baseline."""

    name: str = Field(pattern=METRIC_NAME_PATTERN)
    """Metric id, unique within the policy."""

    source: MetricSource
    """`score` (a Langfuse score), `error_rate`, `cost`, `latency` or `trace_error_rate`
    (the share of traces with an ERROR observation)."""

    score: str | None = Field(default=None, min_length=1)
    """The Langfuse score name; required for source score."""

    score_type: ScoreType = ScoreType.NUMERIC
    """`numeric`, `boolean` or `categorical` (source score only)."""

    range: ScoreRange | None = None
    """The range of a numeric score; default 0 to 1."""

    bad_values: tuple[Annotated[str, Field(min_length=1)], ...] | None = Field(
        default=None, min_length=1
    )
    """Values of a categorical score that count as bad; the metric is their rate."""

    direction: Direction | None = None
    """`higher` or `lower` is better. Default: higher for numeric and boolean scores, lower
    for everything else, which must be lower."""

    tolerance: Number | None = Field(default=None, ge=0)
    """Largest acceptable degradation, absolute, in the metric's units (latency: ms)."""

    tolerance_percent: Number | None = Field(default=None, ge=0)
    """Largest acceptable degradation, in percent of the baseline (cost and latency)."""

    promote_tolerance: Number | None = Field(default=None, ge=0)
    """Largest degradation that may still be promoted: the canary must be shown no worse
    than this before a step advances. Default: tolerance. A value above tolerance lets a
    release be promoted without proving it is within the stricter rollback margin."""

    promote_tolerance_percent: Number | None = Field(default=None, ge=0)
    """promoteTolerance for metrics that use tolerancePercent. Default: tolerancePercent."""

    quantile: Number | None = Field(default=None, gt=0, lt=1)
    """The latency quantile compared (latency only); default 0.95."""

    critical: Flag = False
    """A failing critical metric rolls the release back; any other failing metric pauses it."""

    effect_size: Number | None = Field(default=None, gt=0)
    """The degradation beyond tolerance that the rollback test is tuned to catch fastest, in
    the metric's units (in percent when the metric uses tolerancePercent)."""

    alpha_weight: Number = Field(default=1.0, gt=0)
    """The metric's relative share of analysis.alpha."""

    @model_validator(mode="after")
    def _consistent(self) -> Metric:
        kind = _MetricKind.of(self)
        violations = [violation for rule in _METRIC_RULES for violation in rule(self, kind)]
        if violations:
            raise RuleError(violations)
        _fill_metric_defaults(self, kind)
        return self


# -- the rules of a metric, each across several of its fields ---------------------------

_Violations = list[tuple[FieldPath, str]]


@dataclass(frozen=True, slots=True)
class _MetricKind:
    """What a metric measures, as its rules need to know it."""

    is_score: bool
    numeric: bool
    """A numeric score."""
    categorical: bool
    """A categorical score."""
    rate: bool
    """Observations are 0/1: error rates, boolean and categorical scores."""
    name: str
    """For messages: ``numeric score``, ``latency``..."""

    @classmethod
    def of(cls, metric: Metric) -> _MetricKind:
        is_score = metric.source is MetricSource.SCORE
        return cls(
            is_score=is_score,
            numeric=is_score and metric.score_type is ScoreType.NUMERIC,
            categorical=is_score and metric.score_type is ScoreType.CATEGORICAL,
            rate=metric.source.is_error_rate
            or (is_score and metric.score_type is not ScoreType.NUMERIC),
            name=f"{metric.score_type} score" if is_score else metric.source.value,
        )


def _score_names_the_langfuse_score(metric: Metric, kind: _MetricKind) -> _Violations:
    if kind.is_score and metric.score is None:
        return [(("score",), "required when source is score (the Langfuse score name)")]
    if not kind.is_score and metric.score is not None:
        return [(("score",), f"only for source score, not {metric.source}")]
    return []


def _score_type_only_for_scores(metric: Metric, kind: _MetricKind) -> _Violations:
    if not kind.is_score and metric.score_type is not ScoreType.NUMERIC:
        return [(("scoreType",), f"only for source score, not {metric.source}")]
    return []


def _range_only_for_numeric_scores(metric: Metric, kind: _MetricKind) -> _Violations:
    if metric.range is not None and not kind.numeric:
        return [(("range",), f"only for numeric scores, not {kind.name} metrics")]
    return []


def _bad_values_for_categorical_scores(metric: Metric, kind: _MetricKind) -> _Violations:
    if kind.categorical and metric.bad_values is None:
        return [(("badValues",), "required for categorical scores: the values that count as bad")]
    if not kind.categorical and metric.bad_values is not None:
        return [(("badValues",), f"only for categorical scores, not {kind.name}")]
    return []


def _higher_is_better_only_for_numeric_and_boolean_scores(
    metric: Metric, kind: _MetricKind
) -> _Violations:
    lower_only = not kind.is_score or kind.categorical
    if lower_only and metric.direction is Direction.HIGHER:
        return [(("direction",), f"must be lower for {kind.name} metrics")]
    return []


def _quantile_only_for_latency(metric: Metric, kind: _MetricKind) -> _Violations:
    if metric.quantile is not None and metric.source is not MetricSource.LATENCY:
        return [(("quantile",), f"only for latency metrics, not {kind.name}")]
    return []


def _one_tolerance(metric: Metric, kind: _MetricKind) -> _Violations:
    if metric.tolerance is not None and metric.tolerance_percent is not None:
        return [((), "set tolerance or tolerancePercent, not both")]
    if metric.tolerance is None and metric.tolerance_percent is None:
        return [((), "needs tolerance or tolerancePercent")]
    return []


def _tolerance_in_the_metric_units(metric: Metric, kind: _MetricKind) -> _Violations:
    """Scores and error rates take an absolute tolerance, costs a percentage; a rate's
    tolerance is below 1, a numeric score's below the width of its range."""
    tolerance, source = metric.tolerance, metric.source
    if (tolerance is None) == (metric.tolerance_percent is None):
        return []  # _one_tolerance tells
    if tolerance is None:
        if source is MetricSource.SCORE or source.is_error_rate:
            return [
                (("tolerancePercent",), f"{source} metrics take tolerance, not tolerancePercent")
            ]
        return []
    if source is MetricSource.COST:
        return [(("tolerance",), "cost metrics take tolerancePercent, not tolerance")]
    if kind.rate and tolerance >= 1:
        return [(("tolerance",), f"must be < 1: {kind.name} metrics are rates")]
    if kind.numeric:
        score_range = metric.range or ScoreRange(min=0, max=1)
        width = score_range.max - score_range.min
        if tolerance >= width:
            message = f"must be less than the width of the score range ({_number(width)})"
            return [(("tolerance",), message)]
    return []


def _promote_tolerance_goes_with_its_tolerance(metric: Metric, kind: _MetricKind) -> _Violations:
    violations: _Violations = []
    if metric.promote_tolerance is not None and metric.tolerance is None:
        violations.append(
            (("promoteTolerance",), "goes with tolerance; use promoteTolerancePercent")
        )
    if metric.promote_tolerance_percent is not None and metric.tolerance_percent is None:
        violations.append(
            (("promoteTolerancePercent",), "goes with tolerancePercent; use promoteTolerance")
        )
    return violations


def _promote_tolerance_of_a_rate_below_one(metric: Metric, kind: _MetricKind) -> _Violations:
    if metric.promote_tolerance is not None and kind.rate and metric.promote_tolerance >= 1:
        return [(("promoteTolerance",), f"must be < 1: {kind.name} metrics are rates")]
    return []


def _effect_size_not_for_latency(metric: Metric, kind: _MetricKind) -> _Violations:
    if metric.effect_size is not None and metric.source is MetricSource.LATENCY:
        message = "not for latency metrics: their test is tuned to the quantile itself"
        return [(("effectSize",), message)]
    return []


_METRIC_RULES: Final[tuple[Callable[[Metric, _MetricKind], _Violations], ...]] = (
    _score_names_the_langfuse_score,
    _score_type_only_for_scores,
    _range_only_for_numeric_scores,
    _bad_values_for_categorical_scores,
    _higher_is_better_only_for_numeric_and_boolean_scores,
    _quantile_only_for_latency,
    _one_tolerance,
    _tolerance_in_the_metric_units,
    _promote_tolerance_goes_with_its_tolerance,
    _promote_tolerance_of_a_rate_below_one,
    _effect_size_not_for_latency,
)
"""Every rule a metric must keep, in the order their violations are reported."""


def _fill_metric_defaults(metric: Metric, kind: _MetricKind) -> None:
    """The defaults that depend on other fields."""
    if metric.direction is None:
        default = Direction.HIGHER if kind.is_score and not kind.categorical else Direction.LOWER
        object.__setattr__(metric, "direction", default)
    if kind.numeric and metric.range is None:
        object.__setattr__(metric, "range", ScoreRange(min=0, max=1))
    if metric.source is MetricSource.LATENCY and metric.quantile is None:
        object.__setattr__(metric, "quantile", LATENCY_DEFAULT_QUANTILE)


class Analysis(_Model):
    """How canary and baseline are compared, and how sure a decision must be."""

    interval: Duration = Field(default=60.0, ge=1, json_schema_extra=_duration_default(60))
    """Time between two analyses."""

    alpha: Number = Field(default=0.05, gt=0, lt=0.5)
    """Bound on the probability that a good canary is rolled back, however often the
    controller looks."""

    on_max_duration: OnMaxDuration = OnMaxDuration.PAUSE
    """What to do when a step reaches maxDuration without a verdict."""

    min_samples: Count = Field(default=30, ge=1)
    """Samples per arm and step needed before advancing."""

    score_settle: Duration = Field(default=0.0, ge=0, json_schema_extra=_duration_default(0))
    """Age a trace must reach before its scores count."""

    score_timeout: Duration = Field(default=1800.0, gt=0, json_schema_extra=_duration_default(1800))
    """A trace without a score after this long counts as unscored in the coverage check."""

    coverage_tolerance: Number = Field(default=0.02, ge=0, le=1)
    """Largest acceptable difference between the arms' fractions of scored traces."""

    sample_ratio: SampleRatio = SampleRatio()
    """The sample-ratio check."""

    circuit_breaker: CircuitBreaker = CircuitBreaker()
    """The error-rate circuit breaker."""

    metrics: tuple[Metric, ...] = Field(min_length=1)
    """The metrics compared; a release needs at least one."""

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
        first: dict[str, int] = {}
        violations: list[tuple[FieldPath, str]] = []
        for index, metric in enumerate(metrics):
            if metric.name in first:
                violations.append(
                    (
                        (index, "name"),
                        f"duplicate metric name '{metric.name}' "
                        f"(also analysis.metrics[{first[metric.name]}])",
                    )
                )
            else:
                first[metric.name] = index
        if violations:
            raise RuleError(violations)
        return metrics

    @model_validator(mode="after")
    def _timeout_after_settle(self) -> Analysis:
        if self.score_timeout <= self.score_settle:
            settle = format_duration(self.score_settle)
            raise _rule((("scoreTimeout",), f"must be greater than scoreSettle ({settle})"))
        return self


class ApprovalQueue(_Model):
    """Approval by review in a Langfuse annotation queue: coalmine adds the canary's
    worst traces and a random sample of the others to the queue, and reads the
    reviewers' scores of one score config on them. Only a score with a Langfuse user as
    its author counts (any API key can write the rest); a reject rolls back."""

    name: str = Field(min_length=1, max_length=200)
    """The annotation queue's name in the Langfuse project."""

    score_config_id: str = Field(min_length=1, max_length=200)
    """The id of the score config reviewers score with: BOOLEAN (true approves) or
    CATEGORICAL (see approveValues and rejectValues)."""

    approve_values: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=("approve",), min_length=1
    )
    """Labels of a CATEGORICAL config that approve."""

    reject_values: tuple[Annotated[str, Field(min_length=1)], ...] = Field(
        default=("reject",), min_length=1
    )
    """Labels of a CATEGORICAL config that reject (the rollout is rolled back)."""

    traces: Count = Field(default=10, ge=1, le=50)
    """Canary traces added to the queue: the worst first, then a random sample."""

    @model_validator(mode="after")
    def _disjoint(self) -> ApprovalQueue:
        both = sorted(set(self.approve_values) & set(self.reject_values))
        if both:
            raise _rule((("rejectValues",), f"also in approveValues: {', '.join(both)}"))
        return self


class Approval(_Model):
    """A person's approval before promotion: a rollout whose last step passed waits in
    phase `approval`, the canary at its last weight and still judged (a regression still
    rolls it back), until someone approves it (`coalmine approve`, the admin API or the
    dashboard) or the timeout passes."""

    timeout: Duration = Field(default=86400.0, gt=0, json_schema_extra=_duration_default(86400))
    """How long to wait for approval."""

    on_timeout: OnApprovalTimeout = OnApprovalTimeout.PAUSE
    """`pause` (a person resumes it, and the wait starts again) or `rollback`."""

    queue: ApprovalQueue | None = None
    """Also approve (or reject) by review in a Langfuse annotation queue."""


class OnInconclusive(StrEnum):
    """What to do when a rung ends without a verdict (too few pairs, scores that never
    came, its maxDuration reached): never a pass."""

    PAUSE = "pause"
    ROLLBACK = "rollback"


class PairedMetric(_Model):
    """The score a paired rung compares: the candidate's minus the baseline's on the same
    input. A call that failed or timed out takes the worst value of the range."""

    score: str = Field(min_length=1, max_length=200)
    """The Langfuse score's name (NUMERIC or BOOLEAN; a BOOLEAN counts 1 for true)."""

    range: ScoreRange = ScoreRange(min=0.0, max=1.0)
    """The score's possible values."""

    direction: Direction = Direction.HIGHER
    """Which way is better."""

    tolerance: Number = Field(default=0.0, ge=0)
    """The candidate blocks when shown worse than the baseline by more than this."""

    promote_tolerance: Number | None = Field(default=None, ge=0)
    """The rung passes when the candidate is shown within this of the baseline (unset:
    tolerance)."""

    effect_size: Number | None = Field(default=None, gt=0)
    """The harm beyond tolerance the block test is tuned for (unset: 5% of the range)."""

    min_score: Number | None = None
    """Hard threshold: the candidate's mean score must reach it (worse blocks)."""

    @model_validator(mode="after")
    def _threshold_in_range(self) -> PairedMetric:
        low, high = self.range.min, self.range.max
        if self.min_score is not None and not low <= self.min_score <= high:
            raise _rule((("minScore",), f"must be within range {_number(low)}..{_number(high)}"))
        if self.tolerance >= high - low:
            raise _rule((("tolerance",), "must be smaller than the range"))
        return self


class HttpEvaluator(_Model):
    """An evaluator behind an HTTP endpoint: coalmine POSTs
    `{"input", "output", "expectedOutput", "metadata"}` and reads `{"value": number}`
    (or a list of such objects with `name`, the one named as the metric's score)."""

    url: HttpUrl
    """The endpoint."""

    timeout: Duration = Field(default=60.0, gt=0, json_schema_extra=_duration_default(60))
    """How long one evaluation may take; past it the item is reported as not scored."""


class DatasetEvaluator(_Model):
    """Where the dataset gate's scores come from: exactly one of `langfuse`, `http`,
    `python`."""

    langfuse: Flag = False
    """Langfuse-managed judges (LLM-as-a-judge rules on the dataset's experiments): their
    scores (source EVAL, named as the metric's score) on each item's task span."""

    http: HttpEvaluator | None = None
    """An HTTP endpoint that scores each answer."""

    python: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    """A Python function as `module:function` with the Langfuse SDK's evaluator signature
    (`input`, `output`, `expected_output`, `metadata` keywords) returning a number, a
    dict or an `Evaluation` (e.g. a pydantic-evals or SDK evaluator function)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetEvaluator:
        chosen = [name for name in ("langfuse", "http", "python") if getattr(self, name)]
        if len(chosen) != 1:
            found = ", ".join(chosen) or "none"
            raise _rule(((), f"needs exactly one of langfuse, http, python (found {found})"))
        return self


class DatasetGate(_Model):
    """The dataset rung: before any user sees the candidate, every item of a Langfuse
    dataset is sent through the candidate and the baseline (the same app, each arm's
    prompt label or upstream), each arm recorded as an experiment of the dataset, scored
    by the evaluator, and compared item by item."""

    name: str = Field(min_length=1, max_length=200)
    """The Langfuse dataset's name."""

    path: str = Field(default="/", pattern=PATH_PREFIX_PATTERN)
    """The app's path an item's input is POSTed to, as JSON."""

    metric: PairedMetric
    """The score compared."""

    evaluator: DatasetEvaluator
    """Where the scores come from."""

    alpha: Number = Field(default=0.05, gt=0, lt=0.5)
    """Chance of blocking a candidate within tolerance."""

    min_pairs: Count = Field(default=30, ge=2)
    """Items scored on both arms below which there is no verdict (inconclusive)."""

    max_unscored: Number = Field(default=0.1, ge=0, le=1)
    """Share of items that may end without a score on either arm (an evaluator that
    failed or a judge that never answered); more is inconclusive."""

    concurrency: Count = Field(default=4, ge=1, le=64)
    """Items in flight at once, per arm."""

    start_after: Duration = Field(default=60.0, ge=0, json_schema_extra=_duration_default(60))
    """How long after the rollout starts the items are sent: an app caches the prompt a
    label names (the Langfuse SDK for 60 s by default), and until its cache has run out
    the candidate's label may still answer with the previous version."""

    request_timeout: Duration = Field(default=120.0, gt=0, json_schema_extra=_duration_default(120))
    """How long the app may take for one item; past it the call counts as failed."""

    score_timeout: Duration = Field(default=900.0, gt=0, json_schema_extra=_duration_default(900))
    """How long to wait for the scores once every item has run; then the rung ends
    with what came (inconclusive when too little)."""

    on_inconclusive: OnInconclusive = OnInconclusive.PAUSE
    """`pause` (a person resumes it, which runs the dataset again, or promotes or rolls
    back) or `rollback`."""


class ShadowGate(_Model):
    """The shadow rung: live requests are mirrored to the candidate (no user sees its
    answers), each copy's score compared with its primary's on the same request, and the
    canary steps start only once the candidate is shown within tolerance."""

    metric: PairedMetric
    """The score compared (the evaluators score both traces of a pair)."""

    alpha: Number = Field(default=0.05, gt=0, lt=0.5)
    """Chance of ever blocking a candidate within tolerance, however often it is looked at."""

    min_pairs: Count = Field(default=30, ge=2)
    """Pairs below which there is no verdict."""

    max_duration: Duration = Field(default=3600.0, gt=0, json_schema_extra=_duration_default(3600))
    """How long the rung may run without a verdict."""

    on_inconclusive: OnInconclusive = OnInconclusive.PAUSE
    """At maxDuration: `pause` or `rollback`."""


class Shadow(_Model):
    """Mirror a sample of requests to a staging upstream; its responses are dropped."""

    upstream: HttpUrl
    """URL of the staging upstream that receives the mirrored requests."""

    percent: Number = Field(gt=0, le=100)
    """Percent of requests to mirror."""

    methods: tuple[Annotated[str, Field(pattern=METHOD_PATTERN)], ...] = Field(
        default=("POST",), min_length=1
    )
    """HTTP methods that may be mirrored."""

    max_body_bytes: Count = Field(default=1048576, ge=1)
    """Requests with a larger body are not mirrored."""

    max_in_flight: Count = Field(default=64, ge=1)
    """Mirrored requests in flight at most; past it a copy is dropped, never queued."""

    gate: ShadowGate | None = None
    """Make the shadow a rung before the canary steps: the upstream serves the
    candidate, copies are mirrored only while the rung runs, and each copy's score is
    compared with its primary's."""

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for index, method in enumerate(methods):
            if method in seen:
                raise _rule(((index,), f"duplicate method '{method}'"))
            seen.add(method)
        return methods


class Policy(_Model):
    """A coalmine release policy: one rollout of a candidate against the stable version."""

    api_version: Literal["coalmine/v1"]
    """Always `coalmine/v1`."""

    kind: Literal["Release"]
    """Always `Release`."""

    name: str = Field(pattern=RELEASE_NAME_PATTERN, max_length=63)
    """The release id: lower-case letters, digits and '-'."""

    target: Target
    """What is released."""

    routing: Routing = Routing()
    """How requests are assigned to arms."""

    steps: tuple[Step, ...] = Field(min_length=1)
    """Canary weights in increasing order; after the last step the canary is promoted."""

    dataset: DatasetGate | None = None
    """The dataset rung: a Langfuse dataset through the candidate and the baseline
    before any user sees the candidate."""

    shadow: Shadow | None = None
    """Mirror a sample of requests to staging (with `gate`: the shadow rung)."""

    analysis: Analysis
    """How the canary is judged."""

    approval: Approval | None = None
    """Wait for a person's approval before promotion."""

    kubernetes: Kubernetes | None = None
    """Kubernetes Events of the release (cluster mode)."""

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        violations: list[tuple[FieldPath, str]] = []
        for index in range(1, len(steps)):
            previous = steps[index - 1].weight
            if steps[index].weight <= previous:
                violations.append(
                    (
                        (index, "weight"),
                        f"must be greater than the previous step's weight ({_number(previous)})",
                    )
                )
        if violations:
            raise RuleError(violations)
        return steps

    @model_validator(mode="after")
    def _gateway_api_names_every_service(self) -> Policy:
        gateway = self.routing.gateway_api
        target = self.target
        if gateway is None:
            if target.prompt is None and target.upstreams is None:
                raise _rule((("target",), "needs prompt or upstreams"))
            return self
        violations: list[tuple[FieldPath, str]] = []
        if self.target.upstreams is not None:
            violations.append(
                (
                    ("target", "upstreams"),
                    "not with routing.provider gatewayApi: name the Services in routing.gatewayApi",
                )
            )
        if gateway.canary is None and self.target.prompt is None:
            violations.append(
                (
                    ("routing", "gatewayApi", "canary"),
                    "is required without target.prompt: "
                    "an agent release's candidate is its canary Service",
                )
            )
        if self.shadow is not None and gateway.mirror is None:
            violations.append(
                (
                    ("routing", "gatewayApi", "mirror"),
                    "is required with shadow: the Service the copies go to",
                )
            )
        if violations:
            raise RuleError(violations)
        return self


def _number(value: float) -> str:
    """1.0 → '1', 0.25 → '0.25'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _PolicySchemaGenerator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of policy files (YAML spelling), for editors and other tools."""
    schema = Policy.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_PolicySchemaGenerator
    )
    head: JsonSchemaValue = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "coalmine release policy",
    }
    return {**schema, **head}


def policy_json_schema_text() -> str:
    """`policy_json_schema()` as committed in policies/schema.json: stable, 2-space indent."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
