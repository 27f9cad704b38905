"""The msgspec mapper: events <-> stored bytes, with per-user encryption of personal fields.

Personal payload fields (an event class's `PERSONAL`) and personal metadata keys are sealed with the subject
user's data key (AES-256-GCM, associated data = aggregate id, version and field name). When the key has been
destroyed (erasure), they decode as `[erased]`; everything else still decodes.
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

import msgspec
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import register_topic

from pandora_users.domain.events import ALL_EVENTS, BY_TOPIC, ERASED, PERSONAL_METADATA, DomainEvent
from pandora_users.store.crypto import decrypt_field, encrypt_field, is_encrypted


class DataKeys(Protocol):
    """Where the mapper finds a user's data key; None once the key is destroyed."""

    def get(self, user_id: UUID) -> bytes | None: ...


class MissingDataKey(Exception):
    """An event of a user without a data key was about to be written in clear."""


class NullTranscoder(Transcoder):
    """The library wants a transcoder; this mapper encodes with msgspec itself."""

    def encode(self, obj: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError


for _cls in ALL_EVENTS:
    register_topic(_cls.TOPIC, _cls)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _aad(event_id: object, version: int, field: str) -> str:
    return f"{event_id}:{version}:{field}"


class PersonalDataMapper(Mapper[UUID]):
    def __init__(self, keys: DataKeys) -> None:
        super().__init__(transcoder=NullTranscoder())
        self.keys = keys

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        event: DomainEvent = domain_event
        cls = type(event)
        state: dict[str, Any] = msgspec.to_builtins(event)
        del state["originator_id"], state["originator_version"]
        personal = [f for f in cls.PERSONAL if state.get(f) is not None]
        personal_meta = [k for k in PERSONAL_METADATA if k in state["metadata"]]
        if personal or personal_meta:
            key = self.keys.get(event.user_id)
            if key is None:
                raise MissingDataKey(f"no data key for user {event.user_id}")
            oid, version = event.originator_id, event.originator_version
            for f in personal:
                state[f] = encrypt_field(key, state[f], _aad(oid, version, f))
            meta = state["metadata"] = dict(state["metadata"])
            for k in personal_meta:
                meta[k] = encrypt_field(key, meta[k], _aad(oid, version, "metadata." + k))
        if cls.class_version > 1:
            state["class_version"] = cls.class_version
        return StoredEvent(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=cls.TOPIC,
            state=_encoder.encode(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        cls = BY_TOPIC[stored_event.topic]
        state: dict[str, Any] = _decoder.decode(stored_event.state)
        oid, version = stored_event.originator_id, stored_event.originator_version
        self._decrypt(state, cls, oid, version)
        from_version = state.pop("class_version", 1)
        while from_version < cls.class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        state["originator_id"] = oid
        state["originator_version"] = version
        return msgspec.convert(state, cls)

    def _decrypt(self, state: dict[str, Any], cls: type[DomainEvent], oid: object, version: int) -> None:
        meta = state.get("metadata", {})
        sealed = [(state, f, f) for f in cls.PERSONAL if is_encrypted(state.get(f))]
        sealed += [(meta, k, "metadata." + k) for k in PERSONAL_METADATA if is_encrypted(meta.get(k))]
        if not sealed:
            return
        key = self.keys.get(UUID(state["user_id"]))
        for container, name, aad_name in sealed:
            if key is None:
                container[name] = ERASED
                continue
            # A failure here is tampering or a wrong key: DecryptionError propagates, never hidden.
            container[name] = decrypt_field(key, container[name], _aad(oid, version, aad_name))
