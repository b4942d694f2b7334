"""deploy/teardown.sh deletes what the other scripts create."""

from __future__ import annotations

from tests.deploy.conftest import DryRun, RunDry

CREATING = ["infra.sh", "pubsub.sh", "vm.sh", "functions.sh", "gateway.sh"]
# Created but not deleted on their own, and why.
LEFT_ALONE = {
    ("sql", "databases"): "goes with the Cloud SQL instance",
    ("sql", "users"): "goes with the Cloud SQL instance",
    ("compute", "routers", "nats"): "goes with its router",
    ("services", "vpc-peerings"): "the private-services peering may serve other databases",
    (
        "compute",
        "addresses",
        "nimbus-private-services",
    ): "the peering's reserved range stays with it",
    ("iam", "service-accounts"): "deleted with --delete-data only",
}


def resource(group: list[str], name: str) -> tuple[str, ...]:
    # Templates are named after their content; teardown lists and deletes them all.
    if group[-1] == "instance-templates":
        name = name.rsplit("-", 1)[0] + "-*"
    return (*group, name)


def created(run: DryRun) -> set[tuple[str, ...]]:
    """(command group..., name) for each create, e.g. ("pubsub", "topics", "nimbus-jobs")."""
    out = set()
    for command in run.commands:
        words = command.positionals[1:]
        for verb in ("create", "connect", "deploy"):
            if verb in words:
                at = words.index(verb)
                rest = [w for w in words[at + 1 :] if w not in ("http",)]
                out.add(resource(words[:at], rest[0] if rest else ""))
    return out


def deleted(run: DryRun) -> set[tuple[str, ...]]:
    out = set()
    for command in run.commands:
        words = command.positionals[1:]
        if "delete" in words:
            at = words.index("delete")
            out.add(resource(words[:at], words[at + 1]))
        if words[:2] == ["storage", "rm"]:
            out.add(("storage", "buckets", words[2]))
    return out


def test_teardown_deletes_everything_the_scripts_create(run_dry: RunDry):
    made = set().union(*(created(run_dry(script)) for script in CREATING))
    removed = deleted(run_dry("teardown.sh", "--delete-data"))

    def explained(resource: tuple[str, ...]) -> bool:
        return any(resource[: len(key)] == key or resource == key for key in LEFT_ALONE)

    api_configs = {r for r in made if r[:2] == ("api-gateway", "api-configs")}  # listed, deleted
    missing = {r for r in made - removed - api_configs if not explained(r)}
    assert missing == set(), f"teardown.sh leaves these behind: {sorted(missing)}"
    assert any(r[:2] == ("api-gateway", "api-configs") for r in removed)


def test_teardown_keeps_data_unless_asked(run_dry: RunDry):
    kept = deleted(run_dry("teardown.sh"))
    assert not any(r[0] in ("sql", "storage", "secrets") for r in kept)
    assert ("redis", "instances", "nimbus-redis") in kept
