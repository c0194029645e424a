# Sourced by the shell tests: serve_port LOG [TRIES] prints the port a `strata serve --port 0`
# writing to LOG announced ("... on http://127.0.0.1:PORT ..."), waiting up to TRIES/10 s
# (default 10 s); empty if none.
serve_port() {
  local port=""
  for _ in $(seq "${2:-100}"); do
    port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$1")
    [ -n "$port" ] && break
    sleep 0.1
  done
  echo "$port"
}
