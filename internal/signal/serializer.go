package signal

import (
	"strconv"

	gojson "github.com/goccy/go-json"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/serialize"
	"go.mau.fi/libsignal/state/record"
	"google.golang.org/protobuf/proto"
)

// Serializer is the one libsignal serializer Herald uses: the library's
// protobuf serializer, with the PreKeySignalMessage encoder replaced by one
// that writes the same bytes without the library's debug log of every
// serialized message (fmt of the whole byte slice, ~6 % of the warm path
// before a logger can drop it). TestEncryptMatchesLibraryCipher compares with
// the library's own serializer.
var Serializer = func() *serialize.Serializer {
	s := serialize.NewProtoBufSerializer()
	s.PreKeySignalMessage = &preKeyMessageSerializer{}
	s.Session = sessionSerializer{}
	return s
}()

type preKeyMessageSerializer struct {
	serialize.ProtoBufPreKeySignalMessageSerializer // Deserialize
}

// Serialize encodes like the library: the version digit, then the protobuf.
func (*preKeyMessageSerializer) Serialize(m *protocol.PreKeySignalMessageStructure) []byte {
	pm := &serialize.PreKeySignalMessage{
		RegistrationId: &m.RegistrationID,
		SignedPreKeyId: &m.SignedPreKeyID,
		BaseKey:        m.BaseKey,
		IdentityKey:    m.IdentityKey,
		Message:        m.Message,
	}
	if m.PreKeyID != nil && !m.PreKeyID.IsEmpty {
		pm.PreKeyId = &m.PreKeyID.Value
	}
	b, err := proto.Marshal(pm)
	if err != nil {
		return nil // as the library: an unencodable message has no bytes
	}
	return append([]byte(strconv.Itoa(m.Version)), b...)
}

// sessionSerializer encodes session records as the library's JSON serializer
// does (same bytes; TestSessionSerializerMatchesLibrary) with goccy/go-json,
// which is several times faster than encoding/json on these structures:
// every encryption round stores its session.
type sessionSerializer struct{}

func (sessionSerializer) Serialize(s *record.SessionStructure) []byte {
	b, err := gojson.Marshal(s)
	if err != nil {
		return nil // as the library: an unencodable record has no bytes
	}
	return b
}

func (sessionSerializer) Deserialize(b []byte) (*record.SessionStructure, error) {
	var s record.SessionStructure
	if err := gojson.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}
