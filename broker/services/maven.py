"""Resolve a Java server's jars from Maven Central into the cache, once.

Each server has its own small pom under ``deploy/maven/<name>`` (Kafka and Cassandra share
libraries at different versions, so they never share a lib folder). The lib folder is keyed by a
hash of the pom, so editing a version fetches again and an unchanged pom costs nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from broker.exceptions import ServiceError

# Maven 3.8's bundled dependency plugin (2.8) predates options we rely on; pin a recent one.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


def lib_dir(deploy_dir: Path, cache_dir: Path, name: str) -> Path:
    """The folder the jars of ``name`` resolve into (whether fetched yet or not)."""
    pom = deploy_dir / "maven" / name / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    return cache_dir / "jars" / f"{name}-{digest}"


def fetch(deploy_dir: Path, cache_dir: Path, name: str) -> Path:
    """Resolve the jars of ``name`` if they are not cached yet; return their folder."""
    pom = deploy_dir / "maven" / name / "pom.xml"
    if not pom.is_file():
        raise ServiceError(name, f"no pom at {pom}")
    target = lib_dir(deploy_dir, cache_dir, name)
    done = target / ".complete"
    if done.is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(name, "Maven (mvn) is not installed; it resolves the server's jars")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = staging.parent / f"{name}-maven.log"
    with log.open("wb") as out:
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(pom), f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={staging}"],
            stdout=out, stderr=subprocess.STDOUT, check=False,
        )
    jars = list(staging.glob("*.jar"))
    if result.returncode != 0 or not jars:
        raise ServiceError(name, f"Maven could not resolve the jars (exit {result.returncode})",
                           str(log))
    (staging / ".complete").write_text(f"{len(jars)} jars\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
