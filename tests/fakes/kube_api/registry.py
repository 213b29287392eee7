"""Get, create, replace, patch and delete with the generic registry's semantics
(k8s.io/apiserver ``registry/generic/registry.Store`` and ``registry/rest``).

The order of checks follows the real server, as it decides which error a request gets:
decoding (400), namespace and name against the URL (400), validation (422), a
``resourceVersion`` set on create (500), existence (404/409), UID preconditions and
optimistic concurrency (409). An update that changes nothing writes nothing, so the
``resourceVersion`` stays. Deleting an object with finalizers only marks it, and it goes
when an update empties its finalizers.
"""

from __future__ import annotations

import copy
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.kube_api import errors
from tests.fakes.kube_api.bodies import (
    DeleteOptions,
    JsonError,
    WriteOptions,
    json_type,
    parse_json,
    read_object,
    unknown_field_warnings,
)
from tests.fakes.kube_api.errors import ApiError, FieldError, invalid_value
from tests.fakes.kube_api.patches import (
    PatchError,
    PatchFormatError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.fakes.kube_api.resources import ResourceType
from tests.fakes.kube_api.schema import DecodeError
from tests.fakes.kube_api.store import Decision, Delete, ObjectStore, Put
from tests.fakes.kube_api.timefmt import now_time
from tests.fakes.kube_api.validation import common_meta_errors

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH]
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATE_NAME_ATTEMPTS = 8
NAMESPACE_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)


@dataclass
class Outcome:
    """What a verb answers: the HTTP code, the body, and any warnings."""

    code: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _ensure_namespace(meta: dict[str, Any], namespace: str) -> None:
    if meta.get("namespace") and meta["namespace"] != namespace:
        raise errors.bad_request(NAMESPACE_MISMATCH)
    meta["namespace"] = namespace


def _check_name(meta: dict[str, Any], name: str) -> None:
    if meta.get("name", "") != name:
        raise errors.bad_request(
            f"the name of the object ({meta.get('name', '')}) does not match the name on "
            f"the URL ({name})"
        )


def _precondition_failed(rt: ResourceType, namespace: str, name: str, detail: str) -> ApiError:
    cause = (
        f"StorageError: invalid object, Code: 4, Key: {rt.storage_key(namespace, name)}, "
        f"ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: {detail}"
    )
    return errors.conflict(rt.group, rt.plural, name, cause)


def _deleted_status(rt: ResourceType, name: str, uid: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details.update({"kind": rt.plural, "uid": uid})
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


class Registry:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- get ------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        stored = self.store.get(rt.storage, namespace, name)
        if stored is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return rt.to_view(stored)

    # -- create ---------------------------------------------------------------------------

    def create(
        self, rt: ResourceType, namespace: str, raw: bytes, options: WriteOptions
    ) -> Outcome:
        view, warnings = read_object(rt, raw, options.field_validation)
        _ensure_namespace(view["metadata"], namespace)
        incoming = rt.from_view(view)
        generated = not incoming["metadata"].get("name") and incoming["metadata"].get(
            "generateName"
        )
        for attempt in range(GENERATE_NAME_ATTEMPTS):
            candidate = self._before_create(rt, copy.deepcopy(incoming))
            if not options.dry_run and candidate["metadata"].get("resourceVersion"):
                raise errors.internal("resourceVersion should not be set on objects to be created")
            name = candidate["metadata"]["name"]

            def decide(current: dict[str, Any] | None, obj: dict[str, Any] = candidate) -> Decision:
                if current is not None:
                    raise errors.already_exists(rt.group, rt.plural, obj["metadata"]["name"])
                return None if options.dry_run else Put(obj)

            try:
                _, stored = self.store.transact(rt.storage, namespace, name, decide)
            except ApiError as error:
                if (
                    generated
                    and error.reason == "AlreadyExists"
                    and attempt + 1 < (GENERATE_NAME_ATTEMPTS)
                ):
                    continue
                raise
            result = candidate if options.dry_run or stored is None else stored
            return Outcome(201, rt.to_view(result), warnings)
        raise AssertionError("unreachable")

    def _before_create(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """``BeforeCreate``: system fields, a generated name, then validation."""
        meta = obj["metadata"]
        for system in (
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(system, None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"][:58] + suffix
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_time()
        if rt.prepare_create is not None:
            obj = rt.prepare_create(obj)
        obj = rt.as_stored(obj)
        problems = rt.validate(obj) or common_meta_errors(obj, None)
        if problems:
            raise errors.invalid(rt.group, rt.kind, obj["metadata"].get("name", ""), problems)
        return obj

    # -- update ---------------------------------------------------------------------------

    def replace(
        self, rt: ResourceType, namespace: str, name: str, raw: bytes, options: WriteOptions
    ) -> Outcome:
        view, warnings = read_object(rt, raw, options.field_validation)
        meta = view["metadata"]
        _ensure_namespace(meta, namespace)
        _check_name(meta, name)
        incoming = rt.from_view(view)
        code, body = self._update(
            rt,
            namespace=namespace,
            name=name,
            build=lambda _: copy.deepcopy(incoming),
            uid_precondition=meta.get("uid"),
            options=options,
        )
        return Outcome(code, body, warnings)

    def patch(
        self,
        rt: ResourceType,
        *,
        namespace: str,
        name: str,
        content_type: str,
        raw: bytes,
        options: WriteOptions,
    ) -> Outcome:
        accepted = PATCH_TYPES if rt.strategic_merge else [JSON_PATCH, MERGE_PATCH]
        if content_type not in accepted:
            raise errors.unsupported_media_type(content_type, accepted)
        try:
            patch = parse_json(raw)
        except JsonError as error:
            raise errors.bad_request(str(error)) from error
        if content_type == MERGE_PATCH and patch is None:
            raise errors.bad_request("Invalid JSON Patch")
        warnings: list[str] = []

        def build(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is None:
                raise errors.not_found(rt.group, rt.plural, name)
            document = rt.to_view(current)
            try:
                if content_type == JSON_PATCH:
                    patched = json_patch(document, patch)
                elif content_type == MERGE_PATCH:
                    patched = merge_patch(document, patch)
                else:
                    patched = strategic_merge_patch(document, patch)
            except PatchFormatError as error:
                raise errors.bad_request(str(error)) from error
            except PatchError as error:
                raise errors.generic(422) from error
            view = self._decode_patched(rt, patched, options, warnings)
            _ensure_namespace(view["metadata"], namespace)
            _check_name(view["metadata"], name)
            return rt.from_view(view)

        code, body = self._update(
            rt, namespace=namespace, name=name, build=build, uid_precondition=None, options=options
        )
        return Outcome(code, body, warnings)

    @staticmethod
    def _decode_patched(
        rt: ResourceType, patched: Any, options: WriteOptions, warnings: list[str]
    ) -> dict[str, Any]:
        text = json.dumps(patched, separators=(",", ":"))

        def rejected(detail: str) -> ApiError:
            return errors.invalid("", "", "", [invalid_value("patch", text, detail)])

        if not isinstance(patched, dict):
            raise rejected(
                f"json: cannot unmarshal {json_type(patched)} into Go value of "
                f"type {rt.schema.go_name}"
            )
        try:
            decoded = rt.decode(patched)
        except DecodeError as error:
            raise rejected(str(error)) from error
        try:
            warnings += unknown_field_warnings(decoded.unknown, options.field_validation)
        except ApiError as error:
            raise rejected(error.message) from error
        view = decoded.value
        view["apiVersion"], view["kind"] = rt.api_version, rt.kind
        return view

    def _update(
        self,
        rt: ResourceType,
        *,
        namespace: str,
        name: str,
        build: Callable[[dict[str, Any] | None], dict[str, Any]],
        uid_precondition: str | None,
        options: WriteOptions,
    ) -> tuple[int, dict[str, Any]]:
        """``Store.Update``: create on update where allowed, else preconditions, the
        resourceVersion check, ``BeforeUpdate`` and the write."""
        answer: dict[str, Any] = {}

        def decide(current: dict[str, Any] | None) -> Decision:
            if current is None:
                if not rt.allow_create_on_update:
                    raise errors.not_found(rt.group, rt.plural, name)
                if uid_precondition:
                    raise _precondition_failed(
                        rt,
                        namespace,
                        name,
                        f"UID in precondition: {uid_precondition}, UID in object meta: ",
                    )
                new = build(None)
                new["metadata"].pop("resourceVersion", None)
                answer.update(code=201, object=self._before_create(rt, new))
                return None if options.dry_run else Put(answer["object"])
            stored_uid = current["metadata"].get("uid", "")
            if uid_precondition and uid_precondition != stored_uid:
                raise _precondition_failed(
                    rt,
                    namespace,
                    name,
                    f"UID in precondition: {uid_precondition}, UID in object meta: {stored_uid}",
                )
            new = build(current)
            self._check_resource_version(rt, name, new, current)
            new = self._before_update(rt, new, current)
            answer.update(code=200, object=new)
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                answer["deleted"] = True
                return None if options.dry_run else Delete()
            if new == current:
                return None
            return None if options.dry_run else Put(new)

        change, stored = self.store.transact(rt.storage, namespace, name, decide)
        if answer.get("deleted"):
            return 200, _deleted_status(rt, name, answer["object"]["metadata"].get("uid", ""))
        result = stored if change is not None and stored is not None else answer["object"]
        return answer["code"], rt.to_view(result)

    @staticmethod
    def _check_resource_version(
        rt: ResourceType, name: str, new: dict[str, Any], current: dict[str, Any]
    ) -> None:
        meta = new["metadata"]
        stored_version = current["metadata"]["resourceVersion"]
        given = meta.get("resourceVersion", "")
        if not given:
            if not rt.allow_unconditional_update:
                must = FieldError(
                    "FieldValueInvalid",
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )
                raise errors.invalid(rt.group, rt.plural, name, [must])
            meta["resourceVersion"] = stored_version
            return
        if not given.isdigit():
            detail = f'strconv.ParseUint: parsing "{given}": invalid syntax'
            raise errors.invalid(
                rt.group, rt.kind, name, [invalid_value("metadata.resourceVersion", given, detail)]
            )
        if int(given) != int(stored_version):
            raise errors.conflict(rt.group, rt.plural, name, errors.OPTIMISTIC_LOCK_MESSAGE)
        meta["resourceVersion"] = stored_version

    @staticmethod
    def _before_update(
        rt: ResourceType, new: dict[str, Any], old: dict[str, Any]
    ) -> dict[str, Any]:
        """``BeforeUpdate``: fields an update cannot change are kept, then validation."""
        meta, old_meta = new["metadata"], old["metadata"]
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        if "generation" in old_meta:
            meta["generation"] = old_meta["generation"]
        else:
            meta.pop("generation", None)
        if not meta.get("uid"):
            meta["uid"] = old_meta.get("uid", "")
        meta["creationTimestamp"] = old_meta.get("creationTimestamp")
        if old_meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        if (
            old_meta.get("deletionGracePeriodSeconds") is not None
            and meta.get("deletionGracePeriodSeconds") is None
        ):
            meta["deletionGracePeriodSeconds"] = old_meta["deletionGracePeriodSeconds"]
        if rt.prepare_update is not None:
            new = rt.prepare_update(new, old)
        new = rt.as_stored(new)
        problems = common_meta_errors(new, old) + rt.validate_update(new, old)
        if problems:
            raise errors.invalid(rt.group, rt.kind, meta.get("name", ""), problems)
        return new

    # -- delete ---------------------------------------------------------------------------

    def delete(
        self, rt: ResourceType, namespace: str, name: str, options: DeleteOptions
    ) -> Outcome:
        answer: dict[str, Any] = {}

        def decide(current: dict[str, Any] | None) -> Decision:
            if current is None:
                raise errors.not_found(rt.group, rt.plural, name)
            self._check_delete_preconditions(rt, current, options)
            meta = current["metadata"]
            answer["object"] = current
            if not meta.get("finalizers"):
                return None if options.dry_run else Delete()
            answer["pending"] = True
            if meta.get("deletionTimestamp"):
                return None
            meta["deletionTimestamp"] = now_time()
            meta["deletionGracePeriodSeconds"] = 0
            return None if options.dry_run else Put(current)

        change, stored = self.store.transact(rt.storage, namespace, name, decide)
        if answer.get("pending"):
            result = stored if change is not None and stored is not None else answer["object"]
            return Outcome(200, rt.to_view(result))
        uid = answer["object"]["metadata"].get("uid", "")
        return Outcome(200, _deleted_status(rt, name, uid))

    @staticmethod
    def _check_delete_preconditions(
        rt: ResourceType, current: dict[str, Any], options: DeleteOptions
    ) -> None:
        """``BeforeDelete``'s early check; its messages name the kind, not the resource."""
        preconditions = options.preconditions or {}
        meta = current["metadata"]
        name = meta["name"]
        if "uid" in preconditions and preconditions["uid"] != meta.get("uid", ""):
            raise errors.conflict(
                rt.group,
                rt.kind,
                name,
                f"the UID in the precondition ({preconditions['uid']}) does not match the UID "
                f"in record ({meta.get('uid', '')}). The object might have been deleted and "
                "then recreated",
            )
        if "resourceVersion" in preconditions and preconditions["resourceVersion"] != meta.get(
            "resourceVersion", ""
        ):
            raise errors.conflict(
                rt.group,
                rt.kind,
                name,
                f"the ResourceVersion in the precondition ({preconditions['resourceVersion']}) "
                f"does not match the ResourceVersion in record ({meta.get('resourceVersion')}). "
                "The object might have been modified",
            )

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str,
        matches: Callable[[dict[str, Any]], bool],
        options: DeleteOptions,
    ) -> Outcome:
        """``DeleteCollection``: delete each matching object in turn; the list of them as
        they were listed."""
        items, _ = self.store.snapshot(rt.storage, namespace)
        listed = []
        for stored in items:
            if not matches(stored):
                continue
            try:
                self.delete(rt, namespace, stored["metadata"]["name"], options)
            except ApiError as error:
                if error.code != 404:
                    raise
            view = rt.to_view(stored)
            view.pop("apiVersion", None)
            view.pop("kind", None)
            listed.append(view)
        body = {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": listed,
        }
        return Outcome(200, body)
