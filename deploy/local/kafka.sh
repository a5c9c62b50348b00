#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker + controller in one process) on 127.0.0.1,
# for the demo, the test suite and CI. Real broker, fetched from Maven Central.
#
#   deploy/local/kafka.sh start|stop|status|logs
#
# Environment:
#   HOOKLINE_KAFKA_PORT      client port (default 9092); the controller uses port+1
#   HOOKLINE_KAFKA_VERSION   org.apache.kafka:kafka_2.13 version (default 4.1.1)
#   HOOKLINE_KAFKA_HOME      state directory (default .hookline/kafka-<port> in the repo)
#   HOOKLINE_KAFKA_CACHE     jar cache shared by all states (default ~/.cache/hookline/kafka-<version>)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
port=${HOOKLINE_KAFKA_PORT:-9092}
controller_port=$((port + 1))
version=${HOOKLINE_KAFKA_VERSION:-4.1.1}
home=${HOOKLINE_KAFKA_HOME:-$repo/.hookline/kafka-$port}
cache=${HOOKLINE_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline/kafka-$version}
pidfile=$home/kafka.pid
logfile=$home/server.log

log() { printf 'kafka.sh: %s\n' "$*" >&2; }

# Fetch the broker and its runtime dependencies into $cache/lib with Maven.
fetch() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven"; exit 1; }
  command -v java >/dev/null || { log "java not found: install Java 17+"; exit 1; }
  log "fetching org.apache.kafka:kafka_2.13:$version and dependencies into $cache (first run only)"
  mkdir -p "$cache"
  local pom=$cache/pom.xml
  cat >"$pom" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.hookline</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$version</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
EOF
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$cache/lib" >"$cache/mvn.log" 2>&1 || {
    log "maven failed; see $cache/mvn.log"; tail -20 "$cache/mvn.log" >&2; exit 1; }
  touch "$cache/.complete"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# True once the broker accepts TCP connections on its client port and has written
# its "started" line (the controller quorum is up and the broker registered).
answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
    grep -q 'Kafka Server started' "$logfile" 2>/dev/null
}

configure() {
  mkdir -p "$home/data"
  cat >"$home/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
EOF
  cat >"$home/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $logfile
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
}

java_cmd() {
  java -Xms256m -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$cache/lib/*" "$@"
}

start() {
  if running; then
    log "already running (pid $(cat "$pidfile"), port $port)"
    return 0
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is already in use by another process (another checkout's broker?); stop it or set HOOKLINE_KAFKA_PORT"
    exit 1
  fi
  fetch
  configure
  if [ ! -f "$home/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    java_cmd kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$home/server.properties" >"$home/format.log" 2>&1 || {
      log "storage format failed"; cat "$home/format.log" >&2; exit 1; }
  fi
  : >"$logfile"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC \
    -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$cache/lib/*" kafka.Kafka "$home/server.properties" \
    >"$home/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  local waited=0
  until answers; do
    if ! running; then
      log "broker exited during start; last lines:"
      tail -30 "$home/stdout.log" "$logfile" >&2 || true
      exit 1
    fi
    if [ "$waited" -ge 120 ]; then
      log "broker did not answer within 120 s; see $logfile"
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "running on 127.0.0.1:$port (pid $(cat "$pidfile"), state $home)"
}

stop() {
  if ! running; then
    rm -f "$pidfile"
    log "not running"
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running && answers; then
      log "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    else
      log "not running"
      exit 1
    fi
    ;;
  logs) tail -n "${2:-50}" "$logfile" ;;
  fetch) fetch ;;
  *)
    echo "usage: $0 start|stop|status|logs [N]|fetch" >&2
    exit 2
    ;;
esac
