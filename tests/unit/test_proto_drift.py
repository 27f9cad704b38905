"""The generated gRPC code in rpc/gen equals what `just proto` makes from the .proto, and the .proto keeps the
frozen names and field numbers of SPEC §5.1."""

from __future__ import annotations

from pathlib import Path

from rpc import protogen


def test_committed_generated_code_matches_the_proto() -> None:
    expected = protogen.render()
    drifted = protogen.drift(protogen.ROOT / protogen.PACKAGE, expected)
    assert not drifted, f"rpc/gen has drifted from {protogen.PROTO}: run `just proto` ({', '.join(drifted)})"


def test_drift_is_detected(tmp_path: Path) -> None:
    expected = {"user_pb2.py": b"new", "__init__.py": b""}
    (tmp_path / "user_pb2.py").write_bytes(b"old")
    (tmp_path / "stale_grpc.py").write_bytes(b"")
    assert protogen.drift(tmp_path, expected) == ["__init__.py", "stale_grpc.py", "user_pb2.py"]


def test_original_messages_keep_their_field_numbers() -> None:
    from rpc.gen import user_pb2 as pb

    frozen = {
        "User": [
            "id",
            "email",
            "first_name",
            "last_name",
            "kyc_status",
            "role",
            "created_at",
            "updated_at",
            "deleted_at",
        ],
        "GetUserRequest": ["user_id"],
        "GetUserByEmailRequest": ["email"],
        "GetUserResponse": ["user"],
        "UpdateKYCRequest": ["user_id", "kyc_status", "updated_by"],
        "UpdateKYCResponse": ["user"],
        "ValidateUserRequest": ["user_id"],
        "ValidateUserResponse": ["is_valid", "is_active", "kyc_status"],
        "ListUsersRequest": ["limit", "offset"],
        "ListUsersResponse": ["users", "total"],
    }
    for message, fields in frozen.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert [(f.name, f.number) for f in descriptor.fields] == [(n, i) for i, n in enumerate(fields, 1)], message
    service = pb.DESCRIPTOR.services_by_name["UserService"]
    assert pb.DESCRIPTOR.package == "pandora.user.v1"
    assert [m.name for m in service.methods][:5] == [
        "GetUser",
        "GetUserByEmail",
        "UpdateKYCStatus",
        "ValidateUser",
        "ListUsers",
    ]
    streaming = {m.name for m in service.methods if m.server_streaming}
    assert streaming == {"GetUserHistory", "StreamEvents"}
