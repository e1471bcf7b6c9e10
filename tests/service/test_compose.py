"""docker-compose.yml and the Dockerfile: the file parses, and every service's command works.

Docker does not run on these machines, so the Compose file is read as Compose reads it
(YAML with merge keys, then `${VAR}` interpolation) and each application service's command
and healthcheck is run here, exactly as written, in the environment its container would
have: the image's ENV (from the Dockerfile) plus the service's `environment`. What cannot be
the same outside a container is changed, each change named where it is made:

- the hosts `postgres` and `redis`: PostgreSQL is the suite's own on 127.0.0.1:5432 (a
  throwaway database, created and dropped here); Redis is the `redis` service's own command
  (password and all) on a free port, since the machine's 6379 is shared with other runs;
- paths under `/data` (the image's volume) live under a temporary folder;
- the ports web (8000) and Flower (5555) listen on are free ports, in the command and in the
  healthcheck alike.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shelve
import shlex
import socket
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from tests.service.conftest import (
    ROOT,
    Process,
    Processes,
    answers,
    free_port,
    http_get,
    require_binaries,
    run_once,
    save_photo,
    search_path,
    unavailable,
    wait_until,
)

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PYPROJECT = ROOT / "pyproject.toml"

SERVICES = {"postgres", "redis", "migrate", "web", "worker", "beat", "flower"}
APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")
LONG_RUNNING = ("postgres", "redis", "web", "worker", "beat", "flower")
# What the operator's .env holds in these tests (fresh each run; URL-safe, as the URLs in
# the Compose file embed the passwords unquoted).
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": secrets.token_hex(12),
    "REDIS_PASSWORD": secrets.token_hex(12),
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
    "FLOWER_BASIC_AUTH": f"flower:{secrets.token_hex(12)}",
}
POSTGRES: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 5432,
    "user": os.environ.get("PGUSER", "postgres"),
}


# Compose's interpolation ----------------------------------------------------------------------


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty, or a malformed reference."""


# `$$` (a literal dollar), `${...}` (one level of nesting in a default), `$NAME`, and anything
# else after `$`, which is an error.
_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>(?:[^{}]|\{[^{}]*\})*)\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """`text` with its variables substituted the way Compose substitutes them."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"] is not None:
            return "$"
        if match["named"] is not None:
            return environ.get(match["named"], "")
        parsed = _BRACED.fullmatch(match["braced"] or "")
        if parsed is None:
            raise InterpolationError(f"invalid interpolation format {match[0]!r} in {text!r}")
        name, operator, argument = parsed["name"], parsed["operator"], parsed["arg"] or ""
        value = environ.get(name)
        # With a colon, an empty value counts as unset; without one, only unset does.
        missing = value is None or (operator is not None and operator[0] == ":" and not value)
        if operator is None:
            return value or ""
        if operator.endswith("-"):
            return interpolate(argument, environ) if missing else str(value)
        if operator.endswith("+"):
            return "" if missing else interpolate(argument, environ)
        if missing:
            raise InterpolationError(f"required variable {name} is missing a value: {argument}")
        return str(value)

    return _REFERENCE.sub(substitute, text)


def resolve(node: Any, environ: Mapping[str, str]) -> Any:
    """Every string of a parsed YAML document interpolated."""
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [resolve(item, environ) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, environ) for key, value in node.items()}
    return node


def load_compose(environ: Mapping[str, str]) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with `environ` as the shell and .env."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    resolved: dict[str, Any] = resolve(document, environ)
    return resolved


def referenced_variables() -> set[str]:
    """Every variable the Compose file reads from the operator's environment."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    names = set()
    for match in _REFERENCE.finditer(text):
        if match["named"]:
            names.add(match["named"])
        elif match["braced"] and (parsed := _BRACED.fullmatch(match["braced"])):
            names.add(parsed["name"])
    return names


def argv_of(command: str | Sequence[str]) -> list[str]:
    """A service's `command` as an argument vector (Compose splits a string like a shell)."""
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def check_argv(test: str | Sequence[str]) -> list[str]:
    """A healthcheck's `test` as the argument vector Docker runs."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return list(rest)
    assert kind == "CMD-SHELL", f"unknown healthcheck form {test!r}"
    return ["/bin/sh", "-c", " ".join(rest)]


def option(argv: Sequence[str], name: str) -> str | None:
    """The value of `name` in `argv` (`--name value` or `--name=value`), or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def seconds(duration: str | int) -> float:
    """A Compose duration (`5s`, `1m30s`) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


# The Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def image_env() -> dict[str, str]:
    """The image's ENV, which every container of it starts with."""
    environ = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                environ[name] = value
    return environ


# The file itself ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("$A/b", {"A": "x"}, "x/b"),
        ("${A}", {}, ""),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:-${B}}", {"B": "y"}, "y"),
        ("${A:?need A}", {"A": "x"}, "x"),
        ("${A?need A}", {"A": ""}, ""),
        ("${A:+set}", {"A": "x"}, "set"),
        ("${A:+set}", {"A": ""}, ""),
        ("$$A and $${A}", {"A": "x"}, "$A and ${A}"),
        ("redis://:${P:?p}@redis:6379/0", {"P": "pw"}, "redis://:pw@redis:6379/0"),
    ],
)
def test_interpolation_follows_compose(text: str, environ: dict[str, str], expected: str) -> None:
    assert interpolate(text, environ) == expected


@pytest.mark.parametrize(
    ("text", "environ"),
    [("${A:?need A}", {}), ("${A:?need A}", {"A": ""}), ("${A?need A}", {}), ("$ x", {})],
)
def test_interpolation_errors(text: str, environ: dict[str, str]) -> None:
    with pytest.raises(InterpolationError):
        interpolate(text, environ)


@pytest.mark.parametrize("variable", sorted(OPERATOR_ENV))
@pytest.mark.parametrize("value", [None, ""])
def test_the_file_refuses_to_load_without_each_credential(variable: str, value: str | None) -> None:
    environ = {name: v for name, v in OPERATOR_ENV.items() if name != variable}
    if value is not None:
        environ[variable] = value
    with pytest.raises(InterpolationError, match=f"required variable {variable} "):
        load_compose(environ)


def test_env_example_names_every_variable_and_holds_no_credential() -> None:
    example = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            example[name.strip()] = value.strip()
    assert referenced_variables() - set(example) == set()
    assert {name: example[name] for name in OPERATOR_ENV} == dict.fromkeys(OPERATOR_ENV, "")


def test_services_have_healthchecks_and_start_in_order() -> None:
    services = load_compose(OPERATOR_ENV)["services"]
    assert set(services) == SERVICES
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    # The one-off: run to completion once, never restarted, so nothing to health-check.
    assert services["migrate"]["restart"] == "no"
    assert "healthcheck" not in services["migrate"]
    healthy = {"condition": "service_healthy"}
    migrated = {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"] == {"postgres": healthy, "redis": healthy}
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"] == {
            "postgres": healthy,
            "redis": healthy,
            "migrate": migrated,
        }, name
    assert services["flower"]["depends_on"] == {"postgres": healthy, "redis": healthy}


def test_app_services_run_one_image_configured_only_from_the_environment() -> None:
    services = load_compose(OPERATOR_ENV)["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == "." and service["image"] == "rendition-worker:latest", name
        environ = service["environment"]
        database = urlsplit(environ["DATABASE_URL"])
        assert (database.scheme, database.hostname, database.port) == ("postgres", "postgres", 5432)
        assert database.password == OPERATOR_ENV["POSTGRES_PASSWORD"], name
        for variable, db in (("CELERY_BROKER_URL", "/0"), ("CACHE_URL", "/1")):
            url = urlsplit(environ[variable])
            assert (url.scheme, url.hostname, url.port, url.path) == ("redis", "redis", 6379, db)
            assert url.password == OPERATOR_ENV["REDIS_PASSWORD"], f"{name} {variable}"
        assert environ["DJANGO_SECRET_KEY"] == OPERATOR_ENV["DJANGO_SECRET_KEY"], name
        assert environ["DJANGO_ALLOWED_HOSTS"].split(",") == ["localhost", "127.0.0.1"], name
    assert (
        services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == OPERATOR_ENV["FLOWER_BASIC_AUTH"]
    )
    assert (
        services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        == (OPERATOR_ENV["POSTGRES_PASSWORD"])
    )
    # redis-server gets the password from its environment through the shell: `$$` leaves
    # `$REDIS_PASSWORD` for the shell, so the value is in no command Compose shows.
    redis = services["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == OPERATOR_ENV["REDIS_PASSWORD"]
    script = argv_of(redis["command"])[-1]
    assert '--requirepass "$REDIS_PASSWORD"' in script
    assert "--appendonly yes" in script
    assert OPERATOR_ENV["REDIS_PASSWORD"] not in json.dumps(redis["command"])
    assert "$REDIS_PASSWORD" in " ".join(check_argv(redis["healthcheck"]["test"]))


def test_worker_takes_both_lanes_interactive_first_one_task_at_a_time_with_events() -> None:
    services = load_compose(OPERATOR_ENV)["services"]
    worker = argv_of(services["worker"]["command"])
    assert worker[:4] == ["celery", "-A", "rendition_worker.demo.celery", "worker"]
    assert option(worker, "-Q") == "renditions,renditions.bulk"
    assert option(worker, "--prefetch-multiplier") == "1"
    assert "-E" in worker
    # No fixed name, port or container_name: `--scale worker=N` needs none.
    assert not {"container_name", "ports", "hostname"} & set(services["worker"])
    assert option(worker, "-n") is None and option(worker, "--hostname") is None


def test_volumes_and_ports_match_the_commands() -> None:
    compose = load_compose(OPERATOR_ENV)
    services = compose["services"]
    mounts = {
        name: dict(volume.split(":", 1) for volume in service.get("volumes", []))
        for name, service in services.items()
    }
    used = {volume for mounted in mounts.values() for volume in mounted}
    assert used == set(compose["volumes"])
    for name in ("migrate", "web", "worker"):
        assert mounts[name] == {"media": services[name]["environment"]["MEDIA_ROOT"]}, name
    assert mounts["postgres"] == {"pgdata": "/var/lib/postgresql/data"}
    assert mounts["redis"] == {"redisdata": "/data"}  # the redis image's working directory
    schedule = option(argv_of(services["beat"]["command"]), "--schedule")
    assert schedule is not None and mounts["beat"] == {"beat": str(Path(schedule).parent)}
    assert mounts["flower"] == {}
    web = argv_of(services["web"]["command"])
    assert services["web"]["ports"] == ["8000:8000"]  # WEB_PORT unset: the default
    assert option(web, "--bind") == "0.0.0.0:8000"
    assert "127.0.0.1:8000/" in " ".join(check_argv(services["web"]["healthcheck"]["test"]))
    flower = argv_of(services["flower"]["command"])
    assert services["flower"]["ports"] == ["5555:5555"]
    assert option(flower, "--port") == "5555"
    assert "127.0.0.1:5555/" in " ".join(check_argv(services["flower"]["healthcheck"]["test"]))
    published = load_compose({**OPERATOR_ENV, "WEB_PORT": "80", "FLOWER_PORT": "5556"})
    assert published["services"]["web"]["ports"] == ["80:8000"]
    assert published["services"]["flower"]["ports"] == ["5556:5555"]


def test_dockerfile_builds_what_compose_runs() -> None:
    instructions = dockerfile_instructions()
    environ = image_env()
    assert environ["DJANGO_SETTINGS_MODULE"] == "rendition_worker.demo.settings"
    assert not {name for name in environ if re.search("PASSWORD|SECRET|KEY", name)}
    (install,) = [args for instruction, args in instructions if "pip install" in args]
    extras = re.fullmatch(r'pip install "\.\[(?P<extras>[^\]]+)\]"', install)
    assert extras is not None, install
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert set(extras["extras"].split(",")) <= set(declared)
    # Every volume an app service mounts exists in the image, owned by its user, so that
    # Docker copies that ownership into a fresh named volume.
    services = load_compose(OPERATOR_ENV)["services"]
    mounted = {
        volume.split(":", 1)[1] for name in APP_SERVICES for volume in services[name]["volumes"]
    }
    run = " ".join(args for instruction, args in instructions if instruction == "RUN")
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in {"root", "0"}
    owned = re.findall(rf"chown -R {users[-1]}:\S+ (\S+)", run)
    for path in mounted:
        assert path in run.split(), f"the image does not create {path}"
        assert any(path.startswith(f"{folder}/") for folder in owned), f"{path} is not owned"
    (cmd,) = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    assert cmd == argv_of(services["web"]["command"])


# The stack, run here ---------------------------------------------------------------------------


def _replace_once(argv: Sequence[str], old: str, new: str) -> list[str]:
    """`argv` with `old` replaced in the one argument that holds it (fails otherwise)."""
    holding = [index for index, arg in enumerate(argv) if old in arg]
    assert len(holding) == 1, f"{old!r} should occur in exactly one argument of {argv!r}"
    replaced = list(argv)
    replaced[holding[0]] = replaced[holding[0]].replace(old, new)
    return replaced


@dataclass
class Stack:
    """The Compose services run as local processes (see the module's docstring)."""

    compose: dict[str, Any]
    root: Path  # stands for the container's `/`: /data, /app and /home/app are in it
    processes: Processes
    database: str
    redis_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    flower_port: int = field(default_factory=free_port)
    running: dict[str, Process] = field(default_factory=dict)
    last_check: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        """The `services` of the interpolated Compose file."""
        services: dict[str, dict[str, Any]] = self.compose["services"]
        return services

    @property
    def workdir(self) -> Path:
        """The image's WORKDIR: an empty folder, so that nothing is imported from the repo."""
        return self.root / "app"

    def path(self, container_path: str) -> Path:
        """Where a container path (/data/...) lives here."""
        assert container_path.startswith("/"), container_path
        return Path(f"{self.root}{container_path}")

    def localize(self, value: str) -> str:
        """A value of the container's world made to point at the local services and folders."""
        if value.startswith("postgres://"):
            # The suite's own PostgreSQL (trust auth), this run's throwaway database.
            url = urlsplit(value)
            assert (url.hostname, url.port) == ("postgres", 5432), value
            return f"postgres://{POSTGRES['user']}@127.0.0.1:5432/{self.database}"
        if value.startswith("redis://"):
            # The `redis` service's own server, password and database number unchanged.
            return _replace_once([value], "@redis:6379/", f"@127.0.0.1:{self.redis_port}/")[0]
        if value == "/data" or value.startswith("/data/"):
            return str(self.path(value))
        return value

    def environment(self, name: str) -> dict[str, str]:
        """A container's environment: the image's ENV, the service's, and what Docker adds."""
        environ = {**image_env(), **self.services[name].get("environment", {})}
        environ = {key: self.localize(str(value)) for key, value in environ.items()}
        environ.update(
            {
                "PATH": search_path(),
                "HOME": str(self.path("/home/app")),
                # Docker sets it to the container's host name, which the healthchecks of
                # the worker and beat use to address their node (celery@<hostname>).
                "HOSTNAME": socket.gethostname(),
            }
        )
        return environ

    def command(self, name: str) -> list[str]:
        """The service's command, localized."""
        argv = [self.localize(arg) for arg in argv_of(self.services[name]["command"])]
        if name == "web":
            argv = _replace_once(argv, "0.0.0.0:8000", f"0.0.0.0:{self.web_port}")
        elif name == "flower":
            argv = _replace_once(argv, "--port=5555", f"--port={self.flower_port}")
        elif name == "redis":
            # The container's default port 6379 is the machine's shared Redis here.
            argv = _replace_once(
                argv, "exec redis-server", f"exec redis-server --port {self.redis_port}"
            )
            argv[-1] += " --bind 127.0.0.1"
        return argv

    def check(self, name: str) -> list[str]:
        """The service's healthcheck command, localized."""
        argv = check_argv(self.services[name]["healthcheck"]["test"])
        if name == "web":
            argv = _replace_once(argv, "127.0.0.1:8000/", f"127.0.0.1:{self.web_port}/")
        elif name == "flower":
            argv = _replace_once(argv, "127.0.0.1:5555/", f"127.0.0.1:{self.flower_port}/")
        elif name == "redis":
            argv = _replace_once(argv, "redis-cli ping", f"redis-cli -p {self.redis_port} ping")
        return argv

    def start(self, name: str) -> Process:
        """Start the service's command in its container's environment and working directory."""
        cwd = self.path("/data") if name == "redis" else self.workdir
        process = self.processes.start(name, self.command(name), self.environment(name), cwd)
        self.running[name] = process
        return process

    def healthy(self, name: str) -> bool:
        """Whether the service's healthcheck passes now, within the check's own timeout."""
        environ = self.environment(name)
        if name == "postgres":
            # In its container pg_isready reaches the server on the local socket; here the
            # server is the suite's, on 127.0.0.1.
            environ.update({"PGHOST": "127.0.0.1", "PGPORT": str(POSTGRES["port"])})
        timeout = seconds(self.services[name]["healthcheck"].get("timeout", "30s"))
        done = run_once(self.check(name), environ, self.workdir, timeout)
        self.last_check[name] = f"status {done.returncode}: {done.stdout}{done.stderr}"
        return done.returncode == 0

    def wait_healthy(self, name: str) -> None:
        """Wait until the service's healthcheck passes (its process, if any, still running)."""
        watch = [self.running[name]] if name in self.running else []
        wait_until(
            lambda: self.healthy(name),
            f"{name} to become healthy (last check: {self.last_check.get(name)})",
            self.processes,
            watch,
        )

    def wait_completed(self, name: str) -> None:
        """Wait until a one-off service has exited, and require status 0."""
        process = self.running[name]
        wait_until(lambda: not process.alive(), f"{name} to complete", self.processes)
        assert process.popen.returncode == 0, f"{name} failed\n{process.tail()}"

    def start_app_services(self) -> None:
        """Start each app service once what it depends on is in its condition (Compose order)."""
        started: set[str] = set()
        pending = list(APP_SERVICES)
        while pending:
            ready = [
                name
                for name in pending
                if set(self.services[name].get("depends_on", {})) <= started | {"postgres", "redis"}
            ]
            assert ready, f"depends_on has a cycle among {pending}"
            for name in ready:
                for dependency, rule in self.services[name]["depends_on"].items():
                    condition = rule["condition"]
                    if condition == "service_healthy":
                        self.wait_healthy(dependency)
                    elif condition == "service_completed_successfully":
                        self.wait_completed(dependency)
                    else:
                        assert condition == "service_started", condition
                self.start(name)
                started.add(name)
                pending.remove(name)

    def long_running(self) -> list[Process]:
        """The started processes that must keep running (every one but `migrate`)."""
        return [process for name, process in self.running.items() if name != "migrate"]

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of a query on the stack's database."""
        with psycopg.connect(**POSTGRES, dbname=self.database) as connection:
            return connection.execute(sql.encode(), params or None).fetchall()


def postgres_admin(sql: str) -> None:
    """One statement on the maintenance database, outside a transaction."""
    with psycopg.connect(**POSTGRES, dbname="postgres", autocommit=True) as connection:
        connection.execute(sql.encode())


@pytest.fixture(scope="module")
def stack(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every service of the Compose file running locally, in Compose's start order."""
    require_binaries("redis-server", "redis-cli", "pg_isready", "celery", "gunicorn")
    try:
        psycopg.connect(**POSTGRES, dbname="postgres", connect_timeout=3).close()
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    root = tmp_path_factory.mktemp("container")
    # What the image's build creates (Dockerfile: WORKDIR /app, mkdir -p /data/...).
    for folder in ("/app", "/home/app", "/data/media", "/data/beat"):
        Path(f"{root}{folder}").mkdir(parents=True)
    database = f"rw_compose_{os.getpid()}"
    postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    postgres_admin(f'CREATE DATABASE "{database}"')
    stack = Stack(load_compose(OPERATOR_ENV), root, processes, database)
    try:
        stack.wait_healthy("postgres")
        stack.start("redis")
        stack.wait_healthy("redis")
        stack.start_app_services()
        yield stack
    finally:
        processes.close()
        postgres_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_every_long_running_service_becomes_healthy(stack: Stack) -> None:
    for name in LONG_RUNNING:
        stack.wait_healthy(name)
    migrate = stack.running["migrate"]
    assert migrate.popen.returncode == 0
    assert "Applying rendition_worker.0001_initial... OK" in migrate.log_text()


def test_redis_requires_its_password_and_keeps_it_off_the_command_line(stack: Stack) -> None:
    stack.wait_healthy("redis")
    environ = {"PATH": search_path()}
    refused = run_once(["redis-cli", "-p", str(stack.redis_port), "ping"], environ, stack.root)
    assert "NOAUTH" in refused.stdout + refused.stderr
    cmdline = Path(f"/proc/{stack.running['redis'].popen.pid}/cmdline").read_bytes()
    assert OPERATOR_ENV["REDIS_PASSWORD"].encode() not in cmdline


def test_a_saved_photo_is_rendered_by_the_worker_and_served_by_web(stack: Stack) -> None:
    for name in ("web", "worker"):
        stack.wait_healthy(name)
    # A one-off command in the web service's environment (`docker compose exec web ...`).
    pk = save_photo(stack.environment("web"), stack.workdir)

    def renditions() -> list[tuple[str, str, str, str, int]]:
        return [
            (spec, state, name, fmt, size)
            for spec, state, name, fmt, size, source_state in stack.query(
                "SELECT r.spec, r.state, r.name, r.format, r.size, s.state "
                "FROM rendition_worker_rendition r "
                "JOIN rendition_worker_source s ON s.id = r.source_id "
                "JOIN django_content_type t ON t.id = s.content_type_id "
                "WHERE t.app_label = 'demo' AND t.model = 'photo' AND s.object_id = %s",
                str(pk),
            )
            if source_state == "ready"
        ]

    rows = wait_until(renditions, f"photo {pk}'s renditions", stack.processes, stack.long_running())
    assert {state for _, state, _, _, _ in rows} == {"ready"}
    assert {fmt for _, _, _, fmt, _ in rows} == {"avif", "webp", "jpeg"}
    media = stack.path("/data/media")
    for spec, _, name, _, size in rows:
        assert (media / name).stat().st_size == size, spec
    # The web service sees them (shared database, media volume and cache): the gallery's
    # <picture> offers AVIF, and a rendition is served with an immutable Cache-Control.
    page = http_get(f"http://127.0.0.1:{stack.web_port}/")
    assert page.status == 200
    assert b'type="image/avif"' in page.body
    shown = [name for _, _, name, fmt, _ in rows if fmt == "avif" and name.encode() in page.body]
    assert shown, "the gallery lists none of the photo's AVIF renditions"
    avif = shown[0]
    served = http_get(f"http://127.0.0.1:{stack.web_port}/media/{avif}")
    assert served.status == 200 and served.body == (media / avif).read_bytes()
    assert "immutable" in served.headers["Cache-Control"]


def test_web_stays_healthy_with_the_operators_own_host_names(stack: Stack) -> None:
    # What a deployment sets: its public name only. The healthcheck, which asks for
    # 127.0.0.1 from inside the container, must still pass.
    operator = {**OPERATOR_ENV, "DJANGO_ALLOWED_HOSTS": "photos.example.com"}
    deployed = replace(stack, compose=load_compose(operator), web_port=free_port(), running={})
    deployed.start("web")
    deployed.wait_healthy("web")
    base = f"http://127.0.0.1:{deployed.web_port}/"
    assert http_get(base, host="photos.example.com").status == 200
    # The setting took effect: other names are refused.
    assert http_get(base, host="elsewhere.example.org").status == 400


def test_beat_writes_its_schedule_and_sends_an_overdue_reconciliation(stack: Stack) -> None:
    stack.wait_healthy("worker")
    stack.wait_healthy("beat")
    schedule = option(stack.command("beat"), "--schedule")
    assert schedule is not None and schedule.startswith(str(stack.root))
    # A clean stop (SIGTERM) saves the schedule, which a restarted beat reads.
    assert stack.processes.stop(stack.running["beat"]) == 0
    with shelve.open(schedule, writeback=True) as shelf:
        entry = shelf["entries"]["rendition_worker.reconcile"]
        assert entry.task == "rendition_worker.reconcile"
        assert entry.options["queue"] == "renditions.bulk"
        # As if beat had been down for two intervals: the entry is overdue on restart.
        entry.last_run_at -= 2 * timedelta(seconds=entry.schedule.seconds)
    stack.start("beat")
    succeeded = re.compile(r"Task rendition_worker\.reconcile\[[0-9a-f-]+\] succeeded")
    worker = stack.running["worker"]
    wait_until(
        lambda: succeeded.search(worker.log_text()),
        "the worker to run the reconciliation beat sent",
        stack.processes,
        [worker, stack.running["beat"]],
    )
    assert "Sending due task rendition_worker.reconcile" in stack.running["beat"].log_text()


def test_flower_answers_only_with_the_basic_auth_from_the_environment(stack: Stack) -> None:
    stack.wait_healthy("flower")
    api = f"http://127.0.0.1:{stack.flower_port}/api/workers"
    assert http_get(api).status == 401
    assert http_get(api, credentials="flower:wrong").status == 401
    assert answers(api, credentials=OPERATOR_ENV["FLOWER_BASIC_AUTH"], timeout=30)
