#!/usr/bin/env bash
# Apache Kafka on this machine without Docker: the broker's jars from Maven
# Central, a single-node KRaft broker+controller on 127.0.0.1.
#
#   scripts/kafka.sh install           # resolve the pinned Kafka into the cache (once)
#   scripts/kafka.sh start             # format the log dir if new, start, wait until it answers
#   scripts/kafka.sh stop              # SIGTERM (controlled shutdown), wait for the exit
#   scripts/kafka.sh status            # running and answering metadata requests?
#   scripts/kafka.sh create-topic NAME PARTITIONS [config=value ...]
#
# Environment:
#   KAFKA_PORT             client listener (default 9092)
#   KAFKA_CONTROLLER_PORT  controller listener (default KAFKA_PORT + 1)
#   KAFKA_DIR              log dir, config and logs (default /tmp/replayguard-kafka-$KAFKA_PORT)
#   KAFKA_HEAP             JVM heap (default 1g; at most 1 GiB is what the tests assume)
#   KAFKA_WATCH_PID        stop the broker when this process exits (the test harness sets it)
#   REPLAYGUARD_TOOLS      cache folder outside the clone (default /var/cache/replayguard/tools)
#
# docker-compose.yml runs the same version (apache/kafka image) for users with Docker.
set -euo pipefail

KAFKA_VERSION=4.1.1
# the tarball ships this slf4j -> log4j2 binding; the POMs do not (without it
# the broker logs nothing)
LOG4J_VERSION=2.24.3

here="$(cd "$(dirname "$0")" && pwd)"
TOOLS="${REPLAYGUARD_TOOLS:-/var/cache/replayguard/tools}"
mkdir -p "$TOOLS" 2>/dev/null || TOOLS="$HOME/.cache/replayguard/tools"
HOME_DIR="$TOOLS/kafka-$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
DIR="${KAFKA_DIR:-/tmp/replayguard-kafka-$PORT}"
HEAP="${KAFKA_HEAP:-1g}"

fail() {
  echo "kafka.sh: $*" >&2
  exit 1
}

install() {
  if [ -f "$HOME_DIR/.complete" ]; then
    return 0
  fi
  command -v java >/dev/null || fail "install: java is not installed (Java 17 is needed)"
  command -v mvn >/dev/null || fail "install: mvn is not installed (Maven resolves Kafka from Maven Central)"
  mkdir -p "$HOME_DIR"
  cat >"$HOME_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.replayguard</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  echo "kafka.sh: resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS" >&2
  rm -rf "$LIBS"
  (cd "$HOME_DIR" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs) >&2 ||
    fail "install: mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || fail "install: kafka_2.13-$KAFKA_VERSION.jar is missing from $LIBS"
  cat >"$HOME_DIR/log4j2.properties" <<'EOF'
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  cat >"$HOME_DIR/log4j2-tools.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = ERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = ERR
EOF
  touch "$HOME_DIR/.complete"
}

# scripts/kafka/KafkaAdmin.java compiled once per change of its source
compile_admin() {
  local src="$here/kafka/KafkaAdmin.java" out="$HOME_DIR/admin"
  local sum
  sum="$(sha256sum "$src" | cut -c1-16)"
  if [ ! -f "$out/$sum/KafkaAdmin.class" ]; then
    command -v javac >/dev/null || fail "javac is not installed (Java 17 JDK is needed)"
    rm -rf "$out" && mkdir -p "$out/$sum"
    javac -nowarn -d "$out/$sum" -cp "$LIBS/*" "$src" || fail "compiling $src failed"
  fi
  ADMIN_CP="$out/$sum"
}

admin() {
  compile_admin
  java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto \
    -Dlog4j2.configurationFile="$HOME_DIR/log4j2-tools.properties" \
    -cp "$ADMIN_CP:$LIBS/*" KafkaAdmin "$@"
}

# a metadata request the broker answers: kcat when installed (fast), else the
# Java admin client
ready() {
  if command -v kcat >/dev/null; then
    kcat -b "127.0.0.1:$PORT" -L -m 5 >/dev/null
  else
    admin ready "127.0.0.1:$PORT"
  fi
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_of() {
  local f="$DIR/broker.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

write_config() {
  mkdir -p "$DIR/data" "$DIR/logs"
  cat >"$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DIR/data
# one node: internal topics cannot have more than one replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# the default 3 s delay slows every group test; a 1 s floor (default 6 s)
# lets tests detect a killed member in 2 s
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# two cores
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
# compaction tests: the cleaner looks often (topics set segment.ms and min.cleanable.dirty.ratio)
log.cleaner.backoff.ms=500
EOF
}

start() {
  install
  if pid="$(pid_of)"; then
    echo "kafka.sh: a broker already runs from $DIR (pid $pid)" >&2
    exit 0
  fi
  port_open "$PORT" && fail "start: port $PORT is already in use"
  port_open "$CPORT" && fail "start: controller port $CPORT is already in use"
  write_config
  if [ ! -f "$DIR/data/meta.properties" ]; then
    local uuid="-"
    # a cluster id as Kafka makes them (URL-safe base64 of 16 random bytes),
    # never with a leading '-': the format tool would read it as an option
    # (one start in 64 failed that way)
    while [ "${uuid#-}" != "$uuid" ]; do
      uuid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    java -Xmx256m -Dlog4j2.configurationFile="$HOME_DIR/log4j2-tools.properties" -cp "$LIBS/*" \
      kafka.tools.StorageTool format -t "$uuid" -c "$DIR/server.properties" >"$DIR/logs/format.log" 2>&1 ||
      { cat "$DIR/logs/format.log" >&2; fail "start: formatting the KRaft log dir $DIR/data failed"; }
  fi
  nohup java -Xms256m -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HOME_DIR/log4j2.properties" -Dkafka.logs.dir="$DIR/logs" \
    -cp "$LIBS/*" kafka.Kafka "$DIR/server.properties" >"$DIR/logs/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DIR/broker.pid"
  if [ -n "${KAFKA_WATCH_PID:-}" ]; then
    # the broker goes when the process that started it goes (a test run killed midway)
    (
      while kill -0 "$KAFKA_WATCH_PID" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
      kill -TERM "$pid" 2>/dev/null || true
    ) >/dev/null 2>&1 </dev/null &
    disown
  fi
  local deadline=$((SECONDS + 90))
  until port_open "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$DIR/logs/stdout.log" "$DIR/logs/server.log" >&2 2>/dev/null || true
      fail "start: the broker exited during start-up (logs in $DIR/logs)"
    fi
    [ $SECONDS -lt $deadline ] || fail "start: the broker did not listen on $PORT within 90 s (logs in $DIR/logs)"
    sleep 0.2
  done
  until ready >"$DIR/logs/ready.log" 2>&1; do
    kill -0 "$pid" 2>/dev/null || fail "start: the broker exited before answering (logs in $DIR/logs)"
    [ $SECONDS -lt $deadline ] || { cat "$DIR/logs/ready.log" >&2; fail "start: no metadata answer from 127.0.0.1:$PORT within 90 s"; }
    sleep 0.5
  done
  echo "kafka.sh: Apache Kafka $KAFKA_VERSION on 127.0.0.1:$PORT (pid $pid, data $DIR/data, logs $DIR/logs)" >&2
}

stop() {
  local pid
  pid="$(pid_of)" || { echo "kafka.sh: no broker runs from $DIR" >&2; return 0; }
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/broker.pid"; echo "kafka.sh: stopped (pid $pid)" >&2; return 0; }
    sleep 0.1
  done
  echo "kafka.sh: the broker did not stop within 30 s of SIGTERM: killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$DIR/broker.pid"
  exit 1
}

status() {
  local pid
  pid="$(pid_of)" || { echo "kafka.sh: not running ($DIR)"; exit 1; }
  if ready >/dev/null 2>&1; then
    echo "kafka.sh: running (pid $pid) and answering on 127.0.0.1:$PORT"
  else
    echo "kafka.sh: running (pid $pid) but not answering on 127.0.0.1:$PORT"
    exit 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  create-topic)
    [ $# -ge 3 ] || fail "usage: $0 create-topic NAME PARTITIONS [config=value ...]"
    install
    shift
    name="$1" parts="$2"
    shift 2
    admin create "127.0.0.1:$PORT" "$name" "$parts" "$@" || fail "create-topic: creating $name failed"
    ;;
  libs) install; echo "$LIBS" ;;
  *) echo "usage: $0 install|start|stop|status|create-topic NAME PARTITIONS [config=value ...]" >&2; exit 2 ;;
esac
