"""`vmstream serve`: one store as an HTTP service and a web page.

app.py          the app factory: routes, static page, the guard middleware
auth.py         the bearer token (header, or the page's cookie)
errors.py       every error as one-line JSON naming the field
system_routes.py  /healthz, /readyz, /metrics
api.py          the JSON API routes (search, streams, timeline, segments)
media.py        thumbnails (captured at ingest, else decoded from the source); media_routes.py serves them
clips.py        cutting a moment out of a source (stream copy or transcode), the disk cache
live_store.py   the store as immutable snapshots, swapped when a writer commits (thumb_index.py: captured JPEGs)
text_batcher.py the warm text encoder behind a bounded batching queue
moments.py      adjacent hits of one stream merged into moments
params.py       request checks: 4xx JSON errors that name the field
model_loader.py the store's model from OUT/run.json; state.py what the server holds
metrics.py      Prometheus counters and histograms
static/         the page (plain HTML/CSS/JS, no build step)
"""
