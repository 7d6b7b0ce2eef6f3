#!/usr/bin/env bash
# The Java stubs are generated from proto/ by the Maven build itself
# (protobuf-maven-plugin with pinned protoc and grpc-java plugin), so no
# generated code is committed and there is nothing to regenerate here.
exit 0
