//! CloudEvents over the Kafka protocol binding (work in progress).
