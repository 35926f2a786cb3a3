module example.com/vregistry-consumer

go 1.26.0

// tests/support/consumers_go_py.py adds
//   replace github.com/vregistry/vregistry/clients/go => <the client module's folder>
// in the temporary copy, then runs go mod tidy and go build, as a user of a checkout would.
require github.com/vregistry/vregistry/clients/go v0.0.0
