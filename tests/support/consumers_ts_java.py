"""The TypeScript and Java consumers (tests/consumers/typescript, tests/consumers/java), each
installing its client the way its users do, in a temporary directory outside the repository.

- TypeScript: ``npm pack`` of a copy of ``clients/typescript`` (its ``prepack`` compiles it),
  then a fresh project ``npm install ./vregistry-client-*.tgz``, compiles its typed import with
  ``tsc`` and runs with ``node``.
- Java: ``mvn install`` of a copy of ``clients/java`` (with ``protos/`` beside it, as in the
  checkout) into a temporary local repository, then a consumer ``pom.xml`` that depends on
  ``dev.vregistry:vregistry-client:<version>`` is compiled there and run with ``java``.

Both build from copies, so the checkout gets no ``dist/`` or ``target/`` from this test and
``tests/system/test_clients.py``'s own builds in ``clients/`` are never raced. Speed: npm uses
its cache (``--prefer-offline``) and the checkout's ``node_modules`` when there is one; Maven's
temporary repository is seeded from ``~/.m2/repository`` (a ``file://`` repository tried before
Maven Central), and what Maven Central had to give is copied back to ``~/.m2`` (new artifact
versions only, never the client itself), so the next run needs no network.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.consumers import (
    ARTIFACT_SIZES,
    CLIENTS,
    ROOT,
    ConsumerEnv,
    ConsumerStepError,
    answer_line,
    consumer,
    copy_sources,
    run_step,
)

NPM_FLAGS = ("--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error")
MAVEN_FLAGS = ("-B", "-q", "-ntp")
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
# Pinned in tests/consumers/java/pom.xml too (pluginManagement); called by its coordinates so
# that Maven needs no plugin-prefix metadata.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:build-classpath"
CLIENT_GROUP_PATH = Path("dev", "vregistry")


def _tool(name: str, lang: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConsumerStepError(f"[{lang}] {name} is not installed: needed for the {lang} client")
    return path


# --- TypeScript ------------------------------------------------------------------------------


def pack_typescript_client(destination: Path) -> Path:
    """``npm pack`` of a copy of clients/typescript; gives the tarball's path."""
    npm = _tool("npm", "typescript")
    source = destination / "vregistry-client-src"
    shutil.copytree(
        CLIENTS / "typescript",
        source,
        ignore=shutil.ignore_patterns("node_modules", "dist", "*.tgz"),
    )
    # The build tools (tsc) of the checkout, read-only; a fresh checkout gets its own `npm ci`.
    checkout_modules = CLIENTS / "typescript" / "node_modules"
    if (checkout_modules / ".bin" / "tsc").exists():
        (source / "node_modules").symlink_to(checkout_modules, target_is_directory=True)
    else:
        run_step([npm, "ci", *NPM_FLAGS], source, label="typescript")
    packed = destination / "packed"
    packed.mkdir()
    run_step(
        [npm, "pack", "--pack-destination", str(packed), "--loglevel=error"],
        source,
        label="typescript",
    )
    tarballs = sorted(packed.glob("vregistry-client-*.tgz"))
    if len(tarballs) != 1:
        raise ConsumerStepError(f"[typescript] expected one tarball in {packed}, found {tarballs}")
    return tarballs[0]


@consumer("typescript")
def typescript_consumer(env: ConsumerEnv) -> str:
    npm = _tool("npm", "typescript")
    node = _tool("node", "typescript")
    tarball = pack_typescript_client(env.tmp_dir)
    ARTIFACT_SIZES["typescript package (npm pack .tgz)"] = tarball.stat().st_size
    project = copy_sources("typescript", env.tmp_dir)
    shutil.copy2(tarball, project / tarball.name)
    run_step([npm, "install", *NPM_FLAGS, f"./{tarball.name}"], project, label="typescript")
    run_step(
        [str(project / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"],
        project,
        label="typescript",
    )
    stdout = run_step(
        [node, str(project / "dist" / "main.js"), str(env.write_input())],
        project,
        label="typescript",
    )
    return answer_line(stdout, "typescript")


# --- Java ------------------------------------------------------------------------------------


def java_client_version() -> str:
    """The client's version, from clients/java/pom.xml (its one definition)."""
    project = ET.parse(CLIENTS / "java" / "pom.xml").getroot()
    version = project.find("m:version", POM_NS)
    if version is None or not (version.text or "").strip():
        raise ConsumerStepError("[java] clients/java/pom.xml has no <version>")
    return (version.text or "").strip()


def _user_repository() -> Path:
    return Path.home() / ".m2" / "repository"


def maven_settings(destination: Path) -> Path:
    """A settings.xml whose active profile puts ~/.m2/repository first, as a file:// repository
    (Maven copies what it needs from there into the temporary local repository); anything it
    lacks still comes from Maven Central, the super-POM's repository."""
    seed = _user_repository()
    repositories = ""
    if seed.is_dir():
        repository = (
            "<id>{kind}</id><url>{url}</url>"
            "<releases><enabled>true</enabled><checksumPolicy>ignore</checksumPolicy></releases>"
            "<snapshots><enabled>false</enabled></snapshots>"
        )
        url = seed.resolve().as_uri()
        repositories = (
            f"<repositories><repository>{repository.format(kind='seed', url=url)}"
            "</repository></repositories>"
            f"<pluginRepositories><pluginRepository>"
            f"{repository.format(kind='seed-plugins', url=url)}"
            "</pluginRepository></pluginRepositories>"
        )
    settings = destination / "settings.xml"
    settings.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">'
        f"<profiles><profile><id>seed</id>{repositories}</profile></profiles>"
        "<activeProfiles><activeProfile>seed</activeProfile></activeProfiles>"
        "</settings>\n"
    )
    return settings


def copy_back_downloads(local: Path) -> None:
    """Artifact versions Maven Central had to give (absent from ~/.m2) go to ~/.m2, so the next
    run is served by the seed; existing versions are never touched, the client never copied."""
    user = _user_repository()
    if not user.is_dir():
        return
    for pom in local.rglob("*.pom"):
        version_dir = pom.parent
        relative = version_dir.relative_to(local)
        if relative.parts[: len(CLIENT_GROUP_PATH.parts)] == CLIENT_GROUP_PATH.parts:
            continue
        target = user / relative
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(version_dir, target)


def install_java_client(destination: Path, local: Path, settings: Path) -> Path:
    """``mvn install`` (tests skipped: test_clients.py runs them) of a copy of clients/java into
    the local repository ``local``; gives the installed jar."""
    mvn = _tool("mvn", "java")
    checkout = destination / "checkout"
    shutil.copytree(CLIENTS / "java", checkout / "clients" / "java",
                    ignore=shutil.ignore_patterns("target"))  # fmt: skip
    shutil.copytree(ROOT / "protos", checkout / "protos")
    run_step(
        [mvn, *MAVEN_FLAGS, "-s", str(settings), f"-Dmaven.repo.local={local}",
         "-DskipTests", "install"],
        checkout / "clients" / "java",
        label="java",
    )  # fmt: skip
    version = java_client_version()
    jar = (
        local / CLIENT_GROUP_PATH / "vregistry-client" / version / f"vregistry-client-{version}.jar"
    )
    if not jar.is_file():
        raise ConsumerStepError(f"[java] mvn install left no {jar}")
    return jar


@consumer("java")
def java_consumer(env: ConsumerEnv) -> str:
    mvn = _tool("mvn", "java")
    java = _tool("java", "java")
    local = env.tmp_dir / "m2-repository"
    settings = maven_settings(env.tmp_dir)
    try:
        jar = install_java_client(env.tmp_dir, local, settings)
        ARTIFACT_SIZES["java client jar (mvn install)"] = jar.stat().st_size
        project = copy_sources("java", env.tmp_dir)
        classpath_file = project / "classpath.txt"
        run_step(
            [mvn, *MAVEN_FLAGS, "-s", str(settings), f"-Dmaven.repo.local={local}",
             f"-Dvregistry.client.version={java_client_version()}",
             f"-Dmdep.outputFile={classpath_file}", "compile", DEPENDENCY_PLUGIN],
            project,
            label="java",
        )  # fmt: skip
    finally:
        copy_back_downloads(local)
    classpath = os.pathsep.join(
        [str(project / "target" / "classes"), classpath_file.read_text().strip()]
    )
    stdout = run_step(
        [java, "-cp", classpath, "consumer.Main", str(env.write_input())],
        project,
        label="java",
    )
    return answer_line(stdout, "java")
