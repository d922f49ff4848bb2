// Package precopy will hold the pre-copy engine and its policy: rounds of
// CRIU pre-dump on a running container, the decision when to stop, the
// merge of the round chain into one flat image set, and the report. It
// imports nothing from containerd, so it is tested on recorded CRIU
// statistics and image files. Empty until the engine lands (issue 8).
package precopy
