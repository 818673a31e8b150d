"""The cluster configs in cluster/ are valid: required fields, cross-references, one Ray version,
and images / pip installs that really install this package.

Each check is a function returning a list of problems, so the same functions are shown to reject
broken variants of the files (a validator that cannot fail proves nothing).
"""
import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]

# GPUs and vCPUs of the EC2 instance types a config may use (AWS instance type specifications).
EC2_GPUS = {"g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.12xlarge": 4, "g5.xlarge": 1, "g5.2xlarge": 1,
            "g5.4xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8, "g6.xlarge": 1, "g6.12xlarge": 4,
            "p3.2xlarge": 1, "p3.8xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}
EC2_VCPUS = {"m6i.xlarge": 4, "m6i.2xlarge": 8, "m6i.4xlarge": 16, "g4dn.xlarge": 4, "g4dn.2xlarge": 8,
             "g4dn.12xlarge": 48, "g5.xlarge": 4, "g5.2xlarge": 8, "g5.4xlarge": 16, "g5.12xlarge": 48,
             "g5.48xlarge": 192, "g6.xlarge": 4, "g6.12xlarge": 48, "p3.2xlarge": 8, "p3.8xlarge": 32,
             "p4d.24xlarge": 96, "p5.48xlarge": 192}
HEAD_PORTS = {6379, 8265, 10001}  # GCS, dashboard / job server, Ray client


def load_yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def ray_version_in(text: str) -> str:
    """The x.y.z Ray version named in an image reference or version string ('' if none)."""
    m = (re.search(r"(?:rayproject/ray(?:-ml)?:|[-_.]ray)v?(\d+\.\d+\.\d+)", text)  # image name or tag
         or re.search(r"^(\d+\.\d+\.\d+)$", text))  # a bare version
    return m.group(1) if m else ""


def simple_commands(command: str) -> list:
    """The words of each simple command in a shell command line (split at ; && || |, quotes respected)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands = [[]]
    for tok in lexer:
        if tok and set(tok) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(tok)
    return [c for c in commands if c]


def ray_starts(command: str) -> list:
    """``(arguments, environment)`` of each ``ray start`` in a shell command line: the environment is what
    ``VAR=value`` prefixes and earlier ``export VAR=value`` in the line set for it."""
    exported, starts = {}, []
    for words in simple_commands(command):
        env = dict(exported)
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words[:1] == ["export"]:
            exported.update(w.partition("=")[::2] for w in words[1:] if "=" in w)
        elif words[:2] == ["ray", "start"]:
            starts.append((words[2:], env))
    return starts


def pip_install_targets(command: str) -> list:
    """Requirement arguments of each ``pip install`` in a shell command line."""
    targets = []
    for words in simple_commands(command):
        for i in range(len(words) - 1):
            if words[i] == "pip" and words[i + 1] == "install" or words[i].endswith("/pip") and words[i + 1] == "install":
                args = words[i + 2:]
                skip_next = False
                for a in args:
                    if skip_next:
                        skip_next = False
                    elif a in ("-r", "-c", "--index-url", "-i", "--extra-index-url", "-f", "--find-links"):
                        skip_next = True
                    elif not a.startswith("-"):
                        targets.append(a)
    return targets


def installed_project(target: str, file_mounts: dict) -> str:
    """The project a pip target installs: ``name[extras] @ url`` -> name; a path that a file mount
    fills from a local folder -> that folder's pyproject name; '' when unknown."""
    base = re.sub(r"\[.*\]$", "", target.split("@")[0].strip())
    if "/" not in base and base not in (".", ".."):
        return re.split(r"[<>=!~ ]", base)[0]
    remote = base.replace("$HOME/", "~/").rstrip("/")
    for mount_remote, local in (file_mounts or {}).items():
        if mount_remote.rstrip("/") == remote:
            pyproject = (REPO / local) / "pyproject.toml"
            if pyproject.is_file():
                return tomllib.loads(pyproject.read_text())["project"]["name"]
    return ""


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher
# --------------------------------------------------------------------------------------------------
def launcher_problems(cfg: dict) -> list:
    """What `ray up` would reject, or what would leave vosbatch without GPUs or without its package."""
    problems = []
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type", "auth"):
        if key not in cfg:
            problems.append(f"missing {key}")
    provider = cfg.get("provider") or {}
    if provider.get("type") != "aws":
        problems.append(f"provider.type is {provider.get('type')!r}, not aws")
    if not provider.get("region"):
        problems.append("provider.region missing")
    zones = str(provider.get("availability_zone") or "")
    if not zones or any(not z.strip().startswith(str(provider.get("region"))) for z in zones.split(",")):
        problems.append(f"availability_zone {zones!r} not in region {provider.get('region')!r}")
    types = cfg.get("available_node_types") or {}
    head = cfg.get("head_node_type")
    if head not in types:
        problems.append(f"head_node_type {head!r} is not in available_node_types")
    min_sum = 0
    for name, nt in types.items():
        for key in ("node_config", "resources", "min_workers", "max_workers"):
            if key not in nt:
                problems.append(f"{name}: missing {key}")
        if not isinstance(nt.get("min_workers", 0), int) or not isinstance(nt.get("max_workers", 0), int):
            problems.append(f"{name}: min/max_workers must be integers")
            continue
        if nt.get("min_workers", 0) > nt.get("max_workers", 0):
            problems.append(f"{name}: min_workers > max_workers")
        if name != head:
            min_sum += nt.get("min_workers", 0)
        node = nt.get("node_config") or {}
        itype = node.get("InstanceType")
        res = nt.get("resources") or {}
        if not itype or not node.get("ImageId"):
            problems.append(f"{name}: node_config needs InstanceType and ImageId")
        gpus = EC2_GPUS.get(itype, 0)
        if gpus and res.get("GPU") != gpus:
            problems.append(f"{name}: {itype} has {gpus} GPU(s) but resources declare GPU={res.get('GPU')}")
        if not gpus and res.get("GPU"):
            problems.append(f"{name}: {itype} has no GPU but resources declare GPU={res.get('GPU')}")
        if itype in EC2_VCPUS and res.get("CPU", 0) > EC2_VCPUS[itype]:
            problems.append(f"{name}: CPU={res.get('CPU')} exceeds the {EC2_VCPUS[itype]} vCPUs of {itype}")
        if "Arn" not in (node.get("IamInstanceProfile") or {}):
            problems.append(f"{name}: no IamInstanceProfile (S3 access comes from the instance role)")
    if not any((nt.get("resources") or {}).get("GPU") for n, nt in types.items() if n != head):
        problems.append("no GPU worker node type")
    if isinstance(cfg.get("max_workers"), int) and cfg["max_workers"] < min_sum:
        problems.append(f"max_workers {cfg['max_workers']} < sum of min_workers {min_sum}")
    if not (cfg.get("docker") or {}).get("image"):
        problems.append("docker.image missing")
    if not any(installed_project(t, cfg.get("file_mounts")) == PROJECT
               for cmd in cfg.get("setup_commands") or [] for t in pip_install_targets(cmd)):
        problems.append(f"no setup_command pip-installs {PROJECT}")
    if not any("ray start --head" in c for c in cfg.get("head_start_ray_commands") or []):
        problems.append("head_start_ray_commands do not start a head")
    if not any("ray start --address" in c for c in cfg.get("worker_start_ray_commands") or []):
        problems.append("worker_start_ray_commands do not join the head")
    problems += launcher_auth_problems(cfg)
    return problems


def docker_env(cfg: dict) -> dict:
    """Variables that ``docker.run_options`` (``--env``/``-e``) set in every node's container."""
    env, words = {}, [w for o in (cfg.get("docker") or {}).get("run_options") or [] for w in shlex.split(str(o))]
    for flag, value in zip(words, words[1:]):
        if flag in ("--env", "-e") and "=" in value:
            key, _, val = value.partition("=")
            env[key] = val
    return env


def launcher_auth_problems(cfg: dict) -> list:
    """Token authentication: every ``ray start`` (head and workers) with RAY_AUTH_MODE=token and a token
    file that file_mounts ships to every node, and no token in the config itself. A node started
    without the mode sends no token, and the head (in token mode) rejects it with InvalidAuthToken."""
    problems, container = [], docker_env(cfg)
    if "RAY_AUTH_TOKEN" in container:
        problems.append("docker.run_options put the auth token itself in the config")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in cfg.get(key) or []:
            for args, env in ray_starts(command):
                env = {**container, **env}
                where = f"{key}: ray start {' '.join(args[:1])}"
                if env.get("RAY_AUTH_MODE") != "token":
                    problems.append(f"{where} runs without RAY_AUTH_MODE=token")
                if "RAY_AUTH_TOKEN" in env:
                    problems.append(f"{where} has the auth token itself in the config")
                token_file = env.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")  # Ray's default path
                if token_file.replace("$HOME/", "~/") not in (cfg.get("file_mounts") or {}):
                    problems.append(f"{where}: no file_mount ships its token file {token_file}")
    return problems


# --------------------------------------------------------------------------------------------------
# KubeRay
# --------------------------------------------------------------------------------------------------
def _containers(template: dict) -> list:
    return ((template or {}).get("spec") or {}).get("containers") or []


def kuberay_problems(docs: list) -> list:
    """What the KubeRay operator would reject, or what would leave workers without GPUs."""
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    if len(clusters) != 1:
        return [f"expected one RayCluster, found {len(clusters)}"]
    rc = clusters[0]
    problems = []
    if rc.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {rc.get('apiVersion')!r}, not ray.io/v1")
    if not (rc.get("metadata") or {}).get("name"):
        problems.append("metadata.name missing")
    spec = rc.get("spec") or {}
    if not ray_version_in(str(spec.get("rayVersion", ""))):
        problems.append("spec.rayVersion missing")
    head = spec.get("headGroupSpec") or {}
    groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{g.get('groupName')}]", g)
                                          for g in spec.get("workerGroupSpecs") or []]
    if not spec.get("workerGroupSpecs"):
        problems.append("no workerGroupSpecs")
    for where, group in groups:
        params = group.get("rayStartParams")
        if params is None:
            problems.append(f"{where}: rayStartParams missing")
        for k, v in (params or {}).items():
            if not isinstance(v, str):
                problems.append(f"{where}: rayStartParams.{k} must be a string, got {type(v).__name__}")
        containers = _containers(group.get("template"))
        if not containers:
            problems.append(f"{where}: template has no containers")
        for c in containers:
            if not c.get("image") or not c.get("name"):
                problems.append(f"{where}: container without name or image")
    head_ports = {p.get("containerPort") for c in _containers(head.get("template")) for p in c.get("ports") or []}
    if not HEAD_PORTS <= head_ports:
        problems.append(f"head ports {sorted(head_ports)} lack {sorted(HEAD_PORTS - head_ports)}")
    any_gpu = False
    for g in spec.get("workerGroupSpecs") or []:
        name = g.get("groupName")
        if not name:
            problems.append("worker group without groupName")
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", g.get("minReplicas"))
        if not all(isinstance(x, int) for x in (lo, hi, n)) or not lo <= n <= hi:
            problems.append(f"{name}: replicas {n} not within [minReplicas {lo}, maxReplicas {hi}]")
        gpu_limits = [int(str(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)))
                      for c in _containers(g.get("template"))]
        if "gpu" in str(name).lower() and not any(gpu_limits):
            problems.append(f"{name}: a GPU group without nvidia.com/gpu limits")
        declared = (g.get("rayStartParams") or {}).get("num-gpus")
        if declared is not None and str(declared) != str(sum(gpu_limits)):
            problems.append(f"{name}: rayStartParams num-gpus={declared} but the limits give {sum(gpu_limits)}")
        any_gpu |= any(gpu_limits)
    if not any_gpu:
        problems.append("no worker group requests nvidia.com/gpu")
    problems += kuberay_auth_problems(spec, groups)
    return problems


def kuberay_auth_problems(spec: dict, groups: list) -> list:
    """Token authentication: either KubeRay's ``authOptions.mode: token`` (KubeRay >= 1.5.1 then sets both
    variables everywhere), or every Ray container (head, workers, and the autoscaler sidecar) with
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from one Secret key, never a literal value."""
    if (spec.get("authOptions") or {}).get("mode") == "token":
        return []
    problems, secrets_used = [], set()
    envs = [(f"{where} container {c.get('name')}", c.get("env") or []) for where, g in groups
            for c in _containers(g.get("template"))]
    if spec.get("enableInTreeAutoscaling"):
        envs.append(("autoscalerOptions", (spec.get("autoscalerOptions") or {}).get("env") or []))
    for where, env in envs:
        by_name = {e.get("name"): e for e in env}
        if (by_name.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            problems.append(f"{where}: RAY_AUTH_MODE is not token")
        token = by_name.get("RAY_AUTH_TOKEN") or {}
        ref = (token.get("valueFrom") or {}).get("secretKeyRef") or {}
        if "value" in token:
            problems.append(f"{where}: RAY_AUTH_TOKEN has a literal value (use a Secret)")
        elif not ref.get("name") or not ref.get("key") or ref.get("optional"):
            problems.append(f"{where}: RAY_AUTH_TOKEN does not come from a (required) Secret key")
        else:
            secrets_used.add((ref["name"], ref["key"]))
    if len(secrets_used) > 1:
        problems.append(f"the Ray containers read different tokens: {sorted(secrets_used)}")
    return problems


def dockerfile_facts(text: str) -> dict:
    """Base image (ARG defaults resolved) and the pip install targets of a Dockerfile."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
    joined = re.sub(r"\\\n", " ", text)
    runs = re.findall(r"^RUN\s+(.*)$", joined, re.M)
    env = dict(kv.partition("=")[::2] for line in re.findall(r"^ENV\s+(.*)$", joined, re.M)
               for kv in shlex.split(line) if "=" in kv)
    return {"base": base, "pip_targets": [t for r in runs for t in pip_install_targets(r)],
            "copies_pyproject": bool(re.search(r"^COPY\s.*pyproject\.toml", text, re.M)), "env": env,
            "copies_token": bool(re.search(r"^(COPY|ADD)\s.*auth_token", text, re.M))}


@pytest.fixture(scope="module")
def launcher():
    return yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())


@pytest.fixture(scope="module")
def kuberay():
    return load_yaml_docs(CLUSTER / "kuberay-raycluster.yaml")


def _without_auth_mode(cfg: dict, *keys: str) -> None:
    """Drop RAY_AUTH_MODE=token from the container's environment and from these start commands."""
    cfg["docker"]["run_options"] = [o for o in cfg["docker"]["run_options"] if "RAY_AUTH_MODE" not in o]
    for key in keys:
        cfg[key] = [c.replace("RAY_AUTH_MODE=token ", "") for c in cfg[key]]


def test_launcher_config_is_valid(launcher):
    assert launcher_problems(launcher) == []
    gpu_types = {t["node_config"]["InstanceType"] for t in launcher["available_node_types"].values()
                 if t["resources"].get("GPU")}
    assert {"g5.xlarge", "g5.12xlarge"} <= gpu_types
    # token auth: head and workers start in token mode, with the token file shipped to every node
    starts = [(key, env) for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in launcher[key] for _, env in ray_starts(c)]
    assert [k for k, _ in starts] == ["head_start_ray_commands", "worker_start_ray_commands"]
    assert all(env["RAY_AUTH_MODE"] == "token" for _, env in starts)
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert docker_env(launcher)["RAY_AUTH_MODE"] == "token"  # shells and job drivers in the containers too
    # either place alone is enough: the container's environment, or the start commands
    only_commands = copy.deepcopy(launcher)
    _without_auth_mode(only_commands)
    assert launcher_problems(only_commands) == []
    only_container = copy.deepcopy(launcher)
    only_container["head_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "") for c in
                                                 only_container["head_start_ray_commands"]]
    assert launcher_problems(only_container) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda c: c.update(head_node_type="ray.head.missing"), "head_node_type 'ray.head.missing'"),
    (lambda c: c["provider"].update(type="gcp"), "provider.type"),
    (lambda c: c["available_node_types"]["ray.worker.g5-4gpu"]["resources"].update(GPU=1), "has 4 GPU(s)"),
    (lambda c: c["available_node_types"]["ray.worker.g5-1gpu"].pop("resources"), "missing resources"),
    (lambda c: c.update(max_workers=0), "max_workers 0 < sum of min_workers"),
    (lambda c: c.update(setup_commands=["pip install -q numpy"]), f"pip-installs {PROJECT}"),
    (lambda c: c.update(file_mounts={}), f"pip-installs {PROJECT}"),
    (lambda c: c["docker"].pop("image"), "docker.image"),
    # a worker that joins without token mode is refused by the head (InvalidAuthToken)
    (lambda c: _without_auth_mode(c, "worker_start_ray_commands"),
     "worker_start_ray_commands: ray start --address=$RAY_HEAD_IP:6379 runs without RAY_AUTH_MODE=token"),
    (lambda c: _without_auth_mode(c, "head_start_ray_commands"), "ray start --head runs without RAY_AUTH_MODE=token"),
    (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "no file_mount ships its token file ~/.ray/auth_token"),
    (lambda c: c["worker_start_ray_commands"].append("RAY_AUTH_TOKEN_PATH=/etc/ray-token ray start --address=h:6379"),
     "no file_mount ships its token file /etc/ray-token"),
    (lambda c: c["head_start_ray_commands"].append("export RAY_AUTH_TOKEN=abc; ray start --head"),
     "has the auth token itself in the config"),
    (lambda c: c["docker"]["run_options"].append("-e RAY_AUTH_TOKEN=abc"), "put the auth token itself in the config"),
])
def test_launcher_validation_rejects_broken_configs(launcher, break_it, expected):
    broken = copy.deepcopy(launcher)
    break_it(broken)
    assert any(expected in p for p in launcher_problems(broken)), launcher_problems(broken)


def test_kuberay_manifest_is_valid(kuberay):
    assert kuberay_problems(kuberay) == []
    # the pods get S3 access from the standard chain: an IRSA service account and/or a Secret reference
    rc = next(d for d in kuberay if d["kind"] == "RayCluster")
    accounts = {d["metadata"]["name"]: d for d in kuberay if d["kind"] == "ServiceAccount"}
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] in accounts
        for c in pod["containers"]:
            refs = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert refs and all(r["optional"] is True for r in refs)  # optional: IRSA-only clusters need no Secret
            assert not any(e.get("name", "").startswith("AWS_SECRET") and "value" in e for e in c.get("env", []))
    assert "eks.amazonaws.com/role-arn" in accounts[pod["serviceAccountName"]]["metadata"]["annotations"]
    # token auth: head, workers and the autoscaler read one token from one Secret key
    envs = [c["env"] for g in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
            for c in g["template"]["spec"]["containers"]] + [rc["spec"]["autoscalerOptions"]["env"]]
    assert len(envs) == 3
    for env in envs:
        by_name = {e["name"]: e for e in env}
        assert by_name["RAY_AUTH_MODE"]["value"] == "token"
        assert by_name["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "vosbatch-ray-token", "key": "auth_token"}
    # KubeRay's own authOptions (>= 1.5.1) is the other accepted way
    native = copy.deepcopy(rc)
    for env in [c["env"] for g in [native["spec"]["headGroupSpec"], *native["spec"]["workerGroupSpecs"]]
                for c in g["template"]["spec"]["containers"]] + [native["spec"]["autoscalerOptions"]["env"]]:
        env[:] = [e for e in env if not e["name"].startswith("RAY_AUTH_")]
    assert any("RAY_AUTH_MODE is not token" in p for p in kuberay_problems([native]))
    native["spec"]["authOptions"] = {"mode": "token"}
    assert kuberay_problems([native]) == []


def _worker_env(rc: dict) -> list:
    return rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]


def _set_env(env: list, name: str, **entry) -> None:
    env[:] = [e for e in env if e["name"] != name] + ([dict(name=name, **entry)] if entry else [])


@pytest.mark.parametrize("break_it, expected", [
    (lambda rc: rc.update(apiVersion="ray.io/v1alpha1"), "not ray.io/v1"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0].update(replicas=9), "replicas 9 not within"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 1}), "must be a string"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .pop("nvidia.com/gpu"), "without nvidia.com/gpu limits"),
    (lambda rc: rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].pop(), "lack [10001]"),
    (lambda rc: _set_env(_worker_env(rc), "RAY_AUTH_MODE"), "container ray-worker: RAY_AUTH_MODE is not token"),
    (lambda rc: _set_env(_worker_env(rc), "RAY_AUTH_TOKEN", value="abc"), "RAY_AUTH_TOKEN has a literal value"),
    (lambda rc: _set_env(_worker_env(rc), "RAY_AUTH_TOKEN", valueFrom={"secretKeyRef": {"name": "other", "key": "t"}}),
     "read different tokens"),
    (lambda rc: _set_env(_worker_env(rc), "RAY_AUTH_TOKEN", valueFrom={
        "secretKeyRef": {"name": "vosbatch-ray-token", "key": "auth_token", "optional": True}}), "(required) Secret"),
    (lambda rc: rc["spec"]["autoscalerOptions"].pop("env"), "autoscalerOptions: RAY_AUTH_MODE is not token"),
])
def test_kuberay_validation_rejects_broken_manifests(kuberay, break_it, expected):
    broken = copy.deepcopy(kuberay)
    break_it(next(d for d in broken if d["kind"] == "RayCluster"))
    assert any(expected in p for p in kuberay_problems(broken)), kuberay_problems(broken)


def test_one_ray_version_everywhere_and_images_install_this_package(launcher, kuberay):
    rc = next(d for d in kuberay if d["kind"] == "RayCluster")
    docker = dockerfile_facts((CLUSTER / "Dockerfile").read_text())
    images = {c["image"] for g in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
              for c in _containers(g["template"])}
    versions = {
        "aws-gpu.yaml docker.image": ray_version_in(launcher["docker"]["image"]),
        "RayCluster spec.rayVersion": ray_version_in(str(rc["spec"]["rayVersion"])),
        "Dockerfile FROM": ray_version_in(docker["base"]),
        **{f"RayCluster image {i}": ray_version_in(i) for i in images},
    }
    assert len(set(versions.values())) == 1 and "" not in versions.values(), versions
    version = next(iter(versions.values()))
    assert version.split(".")[0] == ray.__version__.split(".")[0], (version, ray.__version__)
    # KubeRay runs the project image that cluster/Dockerfile builds: same name, and it pip-installs this checkout
    assert len(images) == 1 and f"/{PROJECT}-ray:" in next(iter(images))
    assert docker["copies_pyproject"] and any(re.sub(r"\[.*\]$", "", t) == "." for t in docker["pip_targets"])
    # every container of the image runs in token mode; the token never goes into the image
    assert docker["env"]["RAY_AUTH_MODE"] == "token" and docker["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert not any(k.startswith("RAY_AUTH_TOKEN") for k in docker["env"]) and not docker["copies_token"]


def test_runtime_env_ships_the_checkout_and_merges_with_submits_own():
    """`ray job submit --runtime-env cluster/runtime-env.yaml -- vosbatch submit --address auto`: the
    driver's ray.init merges submit's runtime env into the job's, and Ray raises on any shared field
    or environment variable, so the two must not overlap."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from vosbatch.runner.driver import default_runtime_env

    env = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".git", ".venv", "runs"} <= set(env["excludes"])
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())  # Ray requires string values
    assert not any(k.startswith("RAY_AUTH") for k in env.get("env_vars", {}))  # the nodes provide auth, not the job
    submits = default_runtime_env("auto")
    assert _merge_runtime_env(env, submits) is not None, (env, submits)
    for name in (submits or {}).get("env_vars", {}):  # the trap this guards against
        assert _merge_runtime_env(dict(env, env_vars={name: "1"}), submits) is None


def test_pip_target_parsing():
    assert pip_install_targets("pip install --no-cache-dir -q \"$HOME/vosbatch[crf]\" && echo ok") == ["$HOME/vosbatch[crf]"]
    assert pip_install_targets("pip install -i https://x/simple 'vosbatch[crf] @ git+https://h/v@1'") == \
        ["vosbatch[crf] @ git+https://h/v@1"]
    assert installed_project("vosbatch[crf] @ git+https://h/v@1", {}) == "vosbatch"
    assert installed_project("$HOME/other", {"~/other": "."}) == PROJECT
    assert installed_project("$HOME/other", {}) == ""
    assert ray_version_in("ghcr.io/o/vosbatch-ray:0.1.0-ray2.60.0-py311-gpu") == "2.60.0"
    assert ray_version_in("rayproject/ray-ml:2.9.3-gpu") == "2.9.3" and ray_version_in("python:3.11") == ""


def test_ray_start_parsing():
    assert ray_starts("ulimit -n 65536; RAY_AUTH_MODE=token ray start --head --port=6379") == \
        [(["--head", "--port=6379"], {"RAY_AUTH_MODE": "token"})]
    assert ray_starts("export RAY_AUTH_MODE=token A=1 && ray stop; B='x y' ray start --address=h:6379") == \
        [(["--address=h:6379"], {"RAY_AUTH_MODE": "token", "A": "1", "B": "x y"})]
    assert ray_starts("ray stop") == [] and ray_starts("echo ray start") == []
    assert docker_env({"docker": {"run_options": ["--shm-size=8g", "--env RAY_AUTH_MODE=token", "-e A=1"]}}) == \
        {"RAY_AUTH_MODE": "token", "A": "1"}
