"""The catalogue's Kubernetes calendar: `plan` stops on a version a cloud no longer creates, warns before
standard support ends, and every example stack runs on a version all three clouds create."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from infra.catalog import (
    CLOUDS,
    CLUSTER_AUTOSCALER_TAGS,
    DEFAULT_KUBERNETES_VERSION,
    GKE_CHANNEL_MINORS,
    KUBERNETES_CALENDAR_CHECKED,
    KUBERNETES_RELEASES,
    check_kubernetes_version,
    cluster_autoscaler_problem,
    cluster_autoscaler_tag,
)
from infra.settings import load_stack_file
from tests.infra.conftest import STACK_FILES

DAY = KUBERNETES_CALENDAR_CHECKED


def test_the_default_is_in_standard_support_on_every_cloud_with_runway() -> None:
    for cloud in CLOUDS:
        release = KUBERNETES_RELEASES[cloud][DEFAULT_KUBERNETES_VERSION]
        assert release.standard_until - DAY > timedelta(days=180), cloud
        assert check_kubernetes_version(cloud, DEFAULT_KUBERNETES_VERSION, DAY, "REGULAR").errors == ()
    assert DEFAULT_KUBERNETES_VERSION in GKE_CHANNEL_MINORS["REGULAR"]


@pytest.mark.parametrize("path", STACK_FILES, ids=lambda p: p.name)
def test_every_example_stack_runs_on_a_version_its_cloud_creates_today(path: object) -> None:
    settings = load_stack_file(path)  # type: ignore[arg-type]
    channel = settings.gcp.release_channel if settings.gcp else None
    verdict = check_kubernetes_version(settings.cloud, settings.cluster.kubernetes_version, DAY, channel)
    assert verdict == verdict.__class__(), verdict


def test_a_version_that_can_no_longer_be_created_stops_with_the_choices() -> None:
    verdict = check_kubernetes_version("aws", "1.31", DAY)
    assert len(verdict.errors) == 1
    message = verdict.errors[0]
    assert (
        "tritonform:cluster.kubernetesVersion" in message
        and "EKS no longer creates clusters on 1.31" in message
    )
    assert "1.36 (standard support until 2027-08-02)" in message


def test_eks_extended_support_is_a_warning_with_its_end() -> None:
    verdict = check_kubernetes_version("aws", "1.34", date(2026, 12, 10))
    assert verdict.errors == ()
    assert "extended support since 2026-12-02" in verdict.warnings[0] and "2027-12-02" in verdict.warnings[0]
    assert check_kubernetes_version("aws", "1.34", date(2027, 12, 3)).errors


def test_aks_stops_creating_at_the_end_of_support() -> None:
    assert check_kubernetes_version("azure", "1.35", date(2027, 3, 31)).errors == ()
    assert check_kubernetes_version("azure", "1.35", date(2027, 4, 1)).errors


def test_warns_within_sixty_days_of_the_end_of_standard_support() -> None:
    release = KUBERNETES_RELEASES["azure"]["1.36"]

    def ending(today: date) -> list[str]:
        return [
            w for w in check_kubernetes_version("azure", "1.36", today).warnings if "standard support" in w
        ]

    assert ending(release.standard_until - timedelta(days=61)) == []
    assert "ends 2027-06-30 (in 60 days)" in ending(release.standard_until - timedelta(days=60))[0]


def test_gke_creates_only_what_the_release_channel_offers() -> None:
    verdict = check_kubernetes_version("gcp", "1.36", DAY, "STABLE")
    assert verdict.errors and "GKE's STABLE channel no longer creates clusters on 1.36" in verdict.errors[0]
    assert "1.35" in verdict.errors[0]
    assert check_kubernetes_version("gcp", "1.36", DAY, "REGULAR").errors == ()


def test_an_old_calendar_is_called_out() -> None:
    verdict = check_kubernetes_version("aws", "1.36", DAY + timedelta(days=121))
    assert any("infra/catalog.py were read on 2026-12-01" in w for w in verdict.warnings)


def test_each_cluster_autoscaler_tag_is_the_release_of_its_own_minor() -> None:
    assert cluster_autoscaler_tag(DEFAULT_KUBERNETES_VERSION) is not None
    for minor, tag in CLUSTER_AUTOSCALER_TAGS.items():
        assert tag.startswith(f"v{minor}.") and tag.removeprefix(f"v{minor}.").isdigit()
    assert cluster_autoscaler_problem("aws", DEFAULT_KUBERNETES_VERSION) is None
    assert cluster_autoscaler_problem("gcp", "1.37") is None  # GKE and AKS scale their own nodes
    assert "1.37" in str(cluster_autoscaler_problem("aws", "1.37"))
    # Every minor EKS creates today has a release, but for the one the autoscaler has not caught up with.
    creatable = {m for m, r in KUBERNETES_RELEASES["aws"].items() if r.creatable_until >= DAY}
    assert creatable - set(CLUSTER_AUTOSCALER_TAGS) == {"1.37"}
