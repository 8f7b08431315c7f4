#!/usr/bin/env bash
# Install a runnable Apache Kafka broker (jars only, KRaft mode) into the Nudge cache.
#
#   deploy/scripts/install-kafka.sh          # prints the libs directory
#   NUDGE_CACHE=/opt/nudge deploy/scripts/install-kafka.sh
#
# Idempotent: does nothing when the cache is already populated (marker file .complete).
# Requires java (17+) and mvn; jars come from Maven Central via kafka/pom.xml.
# Start the broker with: java -cp "<libs>/*" kafka.Kafka server.properties
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="${script_dir}/kafka/pom.xml"
cache="${NUDGE_CACHE:-${HOME}/.cache/nudge}"
libs="${cache}/kafka/libs"
marker="${libs}/.complete"

if [[ -f "${marker}" ]] && compgen -G "${libs}/kafka_2.13-*.jar" >/dev/null; then
    echo "${libs}"
    exit 0
fi

for tool in java mvn; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "install-kafka.sh: '${tool}' not found on PATH (need Java 17+ and Maven)" >&2
        exit 1
    fi
done

# Download into a sibling temp dir and swap it in, so an interrupted run never
# leaves a half-populated libs dir that looks complete.
mkdir -p "${cache}/kafka"
tmp="$(mktemp -d "${cache}/kafka/libs.tmp.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

mvn -q -B -f "${pom}" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="${tmp}" >&2

if ! compgen -G "${tmp}/kafka_2.13-*.jar" >/dev/null; then
    echo "install-kafka.sh: maven finished but no kafka_2.13 jar in ${tmp}" >&2
    exit 1
fi

rm -rf "${libs}"
mv "${tmp}" "${libs}"
trap - EXIT
touch "${marker}"
echo "${libs}"
