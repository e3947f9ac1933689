# shellcheck shell=bash
# nginx's and HAProxy's configs for the benchmarks (sourced by load.sh and icount.sh): plain
# reverse proxies to the upstream at 127.0.0.1:$UPSTREAM_PORT, keeping upstream connections alive
# and adding X-Forwarded-For as Spindle does, one worker each.

# nginx_config DIR PORT: writes DIR/nginx.conf (and DIR/logs).
nginx_config() {
  local dir=$1 port=$2 user=""
  mkdir -p "$dir/logs"
  # As root the worker drops to an unprivileged user; Debian has nobody:nogroup.
  [ "$(id -u)" -eq 0 ] && user="user nobody nogroup;"
  cat >"$dir/nginx.conf" <<EOF
# Written by bench/proxy_configs.sh: a plain reverse proxy with upstream keep-alive.
$user
worker_processes 1;
worker_rlimit_nofile 10000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream backend {
    server 127.0.0.1:$UPSTREAM_PORT;
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
}

# haproxy_config FILE PORT
haproxy_config() {
  local file=$1 port=$2
  cat >"$file" <<EOF
# Written by bench/proxy_configs.sh: a plain reverse proxy with server-side connection reuse.
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 127.0.0.1:$port
  default_backend upstream
backend upstream
  server upstream 127.0.0.1:$UPSTREAM_PORT
EOF
}
