"""Watched policy files: a directory loaded, edits picked up, a bad edit keeping the last
good version (and reported with file and line), a removed file dropping its release, a
release defined twice, and a Kubernetes ConfigMap's symlink swap. Then through the
controller: a removed policy aborts its release, a bad edit keeps it running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.service import ControllerService, build_service
from controller.settings import ControllerSettings
from policies.domain import Phase
from policies.policy_files import PolicyFiles
from tests.controller.release_rig import Labels, Traffic

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: {name}-prompt}}
  upstreams: {{stable: "http://127.0.0.1:9"}}
steps:
  - {{weight: {weight}, minDuration: 30m}}
  - {{weight: 50, minDuration: 30m}}
analysis:
  interval: 1m
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.03, critical: true}}
routing: {{pathPrefix: /{name}}}
"""

# The first step (line 8, column 14) has a weight over 100.
BAD_WEIGHT = POLICY.replace("{weight}", "150")
# Not YAML: a flow mapping left open on line 8, found out on line 9.
BAD_YAML = POLICY.replace("  - {{weight: {weight}, minDuration: 30m}}", "  - {{weight: 10")


def policy_text(name: str, weight: int = 10) -> str:
    return POLICY.format(name=name, weight=weight)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def first_weight(files: PolicyFiles, name: str) -> float:
    return files.reload()[name].steps[0].weight


# ----------------------------------------------------------------------------- loading


def test_a_directory_contributes_its_yaml_files(tmp_path: Path) -> None:
    write(tmp_path / "alpha.yaml", policy_text("alpha"))
    write(tmp_path / "beta.yml", policy_text("beta"))
    write(tmp_path / "notes.txt", "not a policy")
    write(tmp_path / ".hidden.yaml", "not: [a policy")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested" / "gamma.yaml", policy_text("gamma"))

    files = PolicyFiles([tmp_path])

    assert sorted(files.reload()) == ["alpha", "beta"]
    assert files.problems == []
    assert files.load_errors == 0


def test_files_and_directories_can_be_mixed(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    write(folder / "alpha.yaml", policy_text("alpha"))
    single = write(tmp_path / "beta.yaml", policy_text("beta"))

    assert sorted(PolicyFiles([folder, single]).reload()) == ["alpha", "beta"]


def test_an_edit_is_picked_up(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha", weight=10))
    files = PolicyFiles([tmp_path])
    assert first_weight(files, "alpha") == 10
    stat = path.stat()

    write(path, policy_text("alpha", weight=20))
    # The same modification time: the content, not the clock, says it changed.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert first_weight(files, "alpha") == 20
    assert files.problems == [] and files.load_errors == 0


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path) -> None:
    write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    first = files.reload()["alpha"]
    assert files.reload()["alpha"] is first


@pytest.mark.parametrize(
    ("bad", "where"),
    [(BAD_WEIGHT, ":8:14: steps[0].weight: must be <= 100"), (BAD_YAML, ":9:5: ")],
    ids=["invalid-field", "broken-yaml"],
)
def test_a_bad_edit_keeps_the_last_good_version_until_fixed(
    tmp_path: Path, bad: str, where: str
) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha", weight=10))
    write(tmp_path / "beta.yaml", policy_text("beta"))
    files = PolicyFiles([tmp_path])
    good = files.reload()["alpha"]

    write(path, bad.format(name="alpha", weight=10))
    policies = files.reload()

    assert policies["alpha"] is good  # still in force
    assert "beta" in policies
    [problem] = files.problems
    assert problem.path == str(path)
    assert problem.message.startswith(f"{path}{where}")
    assert problem.kept == "alpha"
    assert files.load_errors == 1

    # Reported on every reload while it stays bad, counted once.
    files.reload()
    assert [p.path for p in files.problems] == [str(path)]
    assert files.load_errors == 1

    write(path, policy_text("alpha", weight=20))
    assert first_weight(files, "alpha") == 20
    assert files.problems == []
    assert files.load_errors == 1


def test_each_bad_version_counts_as_one_load_error(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    files.reload()
    write(path, BAD_WEIGHT.format(name="alpha"))
    files.reload()
    write(path, BAD_YAML.format(name="alpha"))
    files.reload()
    assert files.load_errors == 2
    assert files.problems[0].kept == "alpha"


def test_a_new_bad_file_is_reported_and_keeps_nothing(tmp_path: Path) -> None:
    files = PolicyFiles([tmp_path])
    assert files.reload() == {}
    path = write(tmp_path / "alpha.yaml", BAD_WEIGHT.format(name="alpha"))
    assert files.reload() == {}
    [problem] = files.problems
    assert (problem.path, problem.kept) == (str(path), None)
    assert files.load_errors == 1


def test_a_removed_file_drops_its_release(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha"))
    write(tmp_path / "beta.yaml", policy_text("beta"))
    files = PolicyFiles([tmp_path])
    assert sorted(files.reload()) == ["alpha", "beta"]

    path.unlink()
    assert sorted(files.reload()) == ["beta"]

    write(path, policy_text("alpha"))  # back again
    assert sorted(files.reload()) == ["alpha", "beta"]


def test_a_removed_file_with_a_bad_edit_drops_its_release_too(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    files.reload()
    write(path, BAD_WEIGHT.format(name="alpha"))
    assert "alpha" in files.reload()
    path.unlink()
    assert files.reload() == {}
    assert files.problems == []


def test_a_new_file_is_picked_up(tmp_path: Path) -> None:
    write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    assert sorted(files.reload()) == ["alpha"]
    write(tmp_path / "beta.yaml", policy_text("beta"))
    assert sorted(files.reload()) == ["alpha", "beta"]


def test_a_release_defined_twice_keeps_the_first_file_and_reports_the_second(
    tmp_path: Path,
) -> None:
    first = write(tmp_path / "a-support.yaml", policy_text("support", weight=10))
    second = write(tmp_path / "b-support.yaml", policy_text("support", weight=20))
    files = PolicyFiles([tmp_path])

    assert first_weight(files, "support") == 10
    [problem] = files.problems
    assert problem.path == str(second)
    assert problem.message == (
        f"{first} and {second}: release 'support' is given by two policy files"
    )

    first.unlink()
    assert first_weight(files, "support") == 20
    assert files.problems == []


def test_a_path_prefix_claimed_twice_keeps_the_first_file_and_reports_the_second(
    tmp_path: Path,
) -> None:
    first = write(tmp_path / "a-support.yaml", policy_text("support"))
    second = write(
        tmp_path / "b-search.yaml",
        policy_text("search").replace("pathPrefix: /search", "pathPrefix: /support"),
    )
    files = PolicyFiles([tmp_path])

    assert sorted(files.reload()) == ["support"]
    [problem] = files.problems
    assert (problem.path, problem.kept) == (str(second), None)
    assert problem.message == (
        f"{first} and {second}: releases 'support' and 'search' both claim path prefix '/support'"
    )
    assert files.kept_out() == {"search": problem.message}
    assert sorted(files.reload()) == ["support"]  # reported on every reload
    assert [p.path for p in files.problems] == [str(second)]

    first.unlink()
    assert sorted(files.reload()) == ["search"]
    assert files.problems == [] and files.kept_out() == {}


def test_a_new_file_that_clashes_with_one_in_force_is_kept_out_whatever_its_name(
    tmp_path: Path,
) -> None:
    in_force = write(tmp_path / "b-support.yaml", policy_text("support"))
    files = PolicyFiles([tmp_path])
    assert sorted(files.reload()) == ["support"]
    newcomer = write(
        tmp_path / "a-search.yaml",
        policy_text("search").replace("pathPrefix: /search", "pathPrefix: /support"),
    )

    assert sorted(files.reload()) == ["support"]
    [problem] = files.problems
    assert (problem.path, problem.kept) == (str(newcomer), None)
    assert problem.message == (
        f"{in_force} and {newcomer}: releases 'support' and 'search' both claim path "
        "prefix '/support'"
    )
    assert list(files.kept_out()) == ["search"]


def test_an_edit_that_clashes_keeps_the_version_in_force(tmp_path: Path) -> None:
    write(tmp_path / "a-support.yaml", policy_text("support"))
    search = write(tmp_path / "b-search.yaml", policy_text("search", weight=10))
    files = PolicyFiles([tmp_path])
    good = files.reload()["search"]

    write(
        search,
        policy_text("search", weight=20).replace("pathPrefix: /search", "pathPrefix: /support"),
    )
    policies = files.reload()

    assert sorted(policies) == ["search", "support"]
    assert policies["search"] is good
    [problem] = files.problems
    assert (problem.path, problem.kept) == (str(search), "search")
    assert "both claim path prefix '/support'" in problem.message
    assert files.kept_out() == {}

    write(search, policy_text("search", weight=30))  # fixed: the edit applies
    assert first_weight(files, "search") == 30
    assert files.problems == []


def test_a_prompt_only_release_claims_its_path_prefix(tmp_path: Path) -> None:
    write(
        tmp_path / "a-agent.yaml",
        policy_text("agent").replace("pathPrefix: /agent", "pathPrefix: /"),
    )
    prompt_only = (
        policy_text("prompt")
        .replace('  upstreams: {stable: "http://127.0.0.1:9"}\n', "")
        .replace("pathPrefix: /prompt", "pathPrefix: /")
    )
    write(tmp_path / "b-prompt.yaml", prompt_only)
    files = PolicyFiles([tmp_path])
    assert sorted(files.reload()) == ["agent"]
    assert "both claim path prefix '/'" in files.problems[0].message


def test_current_is_the_set_of_the_last_reload_as_a_snapshot(tmp_path: Path) -> None:
    write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    assert dict(files.current()) == {}
    in_force = files.reload()
    snapshot = files.current()
    assert dict(snapshot) == in_force
    with pytest.raises(TypeError):
        snapshot["beta"] = snapshot["alpha"]  # type: ignore[index]

    write(tmp_path / "beta.yaml", policy_text("beta"))
    assert sorted(files.current()) == ["alpha"]  # not read until the next reload
    files.reload()
    assert sorted(files.current()) == ["alpha", "beta"]
    assert sorted(snapshot) == ["alpha"]  # an earlier snapshot never changes


def test_reloads_from_several_threads_agree_on_one_set(tmp_path: Path) -> None:
    for name in ("alpha", "beta", "gamma"):
        write(tmp_path / f"{name}.yaml", policy_text(name))
    files = PolicyFiles([tmp_path])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: sorted(files.reload()), range(16)))
    assert results == [["alpha", "beta", "gamma"]] * 16
    assert sorted(files.current()) == ["alpha", "beta", "gamma"]
    assert files.load_errors == 0


def test_a_renamed_release_leaves_its_old_name(tmp_path: Path) -> None:
    path = write(tmp_path / "alpha.yaml", policy_text("alpha"))
    files = PolicyFiles([tmp_path])
    files.reload()
    write(path, policy_text("alpha-two"))
    assert sorted(files.reload()) == ["alpha-two"]


# ----------------------------------------------------------------------------- ConfigMap


def _configmap_version(mount: Path, stamp: str, contents: dict[str, str]) -> None:
    """A new timestamped directory, then ``..data`` swapped to it atomically (a rename
    over the old link), as the kubelet updates a mounted ConfigMap."""
    version = mount / f"..{stamp}"
    version.mkdir()
    for name, text in contents.items():
        write(version / name, text)
    staged = mount / "..data_tmp"
    staged.symlink_to(version.name)
    staged.replace(mount / "..data")
    for name in contents:
        link = mount / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


def test_a_configmap_symlink_swap_is_noticed(tmp_path: Path) -> None:
    mount = tmp_path / "policies"
    mount.mkdir()
    _configmap_version(mount, "2026_11_22_10_00_00.1", {"support.yaml": policy_text("support")})
    files = PolicyFiles([mount])
    assert first_weight(files, "support") == 10
    before = (mount / "support.yaml").lstat()

    _configmap_version(
        mount, "2026_11_22_10_05_00.2", {"support.yaml": policy_text("support", weight=25)}
    )
    after = (mount / "support.yaml").lstat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    assert first_weight(files, "support") == 25
    assert files.problems == []

    # A key added to the ConfigMap: a new link next to the others.
    _configmap_version(
        mount,
        "2026_11_22_10_10_00.3",
        {"support.yaml": policy_text("support", weight=25), "search.yaml": policy_text("search")},
    )
    assert sorted(files.reload()) == ["search", "support"]


def test_a_dangling_configmap_link_keeps_the_last_good_version(tmp_path: Path) -> None:
    mount = tmp_path / "policies"
    mount.mkdir()
    _configmap_version(mount, "2026_11_22_10_00_00.1", {"support.yaml": policy_text("support")})
    files = PolicyFiles([mount])
    good = files.reload()["support"]

    # The key is gone from the new version; the kubelet removes the link a moment later.
    _configmap_version(mount, "2026_11_22_10_05_00.2", {})
    assert files.reload()["support"] is good
    [problem] = files.problems
    assert problem.message == f"{mount / 'support.yaml'}:1:1: <document>: file not found"
    assert problem.kept == "support"

    (mount / "support.yaml").unlink()
    assert files.reload() == {}


# ----------------------------------------------------------------------------- controller


class Service:
    """The controller service over a policy directory, with fake Langfuse parts and a
    clock that moves a minute per tick."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "policies"
        self.folder.mkdir()
        self.now = 1_800_000_000.0
        state = root / "state.db"
        self.routing = SqliteRoutingStore(state)
        self.traffic = Traffic(self.routing)
        self.service: ControllerService = build_service(
            ControllerSettings(state=state, metrics_listen=None),
            [self.folder],
            source=self.traffic,
            labels=Labels(),
            clock=lambda: self.now,
        )

    def tick(self, minutes: int = 1) -> None:
        for _ in range(minutes):
            self.now += 60.0
            self.service.tick()

    def phase(self) -> Phase:
        release = self.service.state.release("support")
        assert release is not None
        return release.phase

    def weight(self) -> float:
        table = self.routing.read("support")
        assert table is not None
        return table.canary_weight

    def close(self) -> None:
        self.service.stop()  # closes the controller's routing store too
        self.routing.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    yield running
    running.close()


def test_a_removed_policy_aborts_its_running_release(service: Service) -> None:
    path = write(service.folder / "support.yaml", policy_text("support"))
    service.tick(3)
    assert (service.phase(), service.weight()) == (Phase.CANARY, 10.0)

    path.unlink()
    service.tick()

    assert service.phase() is Phase.ABORTED
    assert service.weight() == 0.0
    decisions = service.service.state.decisions("support")
    assert decisions[-1].decision == "abort"
    assert decisions[-1].reason == "its policy file was removed"
    service.tick(2)  # nothing more happens to it
    assert [record.decision for record in service.service.state.decisions("support")] == [
        "start",
        "abort",
    ]


def test_a_bad_edit_keeps_the_release_running_on_its_last_good_policy(service: Service) -> None:
    path = write(service.folder / "support.yaml", policy_text("support"))
    service.tick(3)
    good = service.service.current_policies()["support"]

    write(path, BAD_WEIGHT.format(name="support"))
    service.tick(5)

    assert (service.phase(), service.weight()) == (Phase.CANARY, 10.0)
    assert service.service.current_policies()["support"] is good
    assert service.service.policy_files.load_errors == 1
    [problem] = service.service.policy_files.problems
    assert problem.kept == "support"
    assert problem.message == f"{path}:8:14: steps[0].weight: must be <= 100"
    assert [record.decision for record in service.service.state.decisions("support")] == ["start"]

    write(path, policy_text("support", weight=10).replace("weight: 50", "weight: 40"))
    service.tick()
    assert service.service.current_policies()["support"].steps[1].weight == 40
    assert service.service.policy_files.problems == []
    assert service.phase() is Phase.CANARY
