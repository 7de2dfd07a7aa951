"""The content-addressed blob store and its remotes: blobs by sha256 on this machine
(`blobs`), what a record points to (`recordblobs`), a remote over any fsspec URL (`remote`,
`remoteindex`) and moving blobs between them (`sync`). Imports nothing above it."""
