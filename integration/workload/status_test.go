package workload

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestStatusRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	want := Status{
		PID: 1, Counter: 10, Cursor: 1 << 40, MaxGapMS: 12.5, Seed: ^uint64(0),
		QuerySeq: 3, Verified: true, FirstBadPage: -1, Checksum: "0badcafe",
		StartedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
	}
	if err := WriteStatus(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStatus(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("read %+v, wrote %+v", got, want)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
}

func TestReadStatusRidesOutALateWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	if err := os.WriteFile(path, []byte(`{"pid": 1, "coun`), 0o644); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(readRetryDelay)
		_ = WriteStatus(path, Status{PID: 7})
	}()
	s, err := ReadStatus(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != 7 {
		t.Fatalf("pid = %d, want 7", s.PID)
	}
}

func TestReadStatusGivesUp(t *testing.T) {
	_, err := ReadStatus(filepath.Join(t.TempDir(), "absent.json"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not-exist", err)
	}
}

func TestWaitQuery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	go func() {
		for seq := uint64(1); seq <= 3; seq++ {
			time.Sleep(PollInterval)
			_ = WriteStatus(path, Status{QuerySeq: seq, StatusSeq: seq})
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := WaitQuery(ctx, path, 2)
	if err != nil {
		t.Fatal(err)
	}
	if s.QuerySeq != 3 {
		t.Fatalf("query_seq = %d, want 3", s.QuerySeq)
	}
}

func TestWaitQueryTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	if err := WriteStatus(path, Status{QuerySeq: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*PollInterval)
	defer cancel()
	if _, err := WaitQuery(ctx, path, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestCheck(t *testing.T) {
	if err := (Status{}).Check(); err == nil {
		t.Error("a status with no query passed Check")
	}
	if err := (Status{QuerySeq: 1, Verified: false, BadPages: 2}).Check(); err == nil {
		t.Error("a status with bad pages passed Check")
	}
	if err := (Status{QuerySeq: 1, Verified: true, FirstBadPage: -1}).Check(); err != nil {
		t.Errorf("an intact status failed Check: %v", err)
	}
}
