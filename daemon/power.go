package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/godbus/dbus/v5"
)

// The system services whose word the daemon takes on the laptop's power
// and connection (SPEC.md §11, "Respecting the laptop").
const (
	upowerName    = "org.freedesktop.UPower"
	upowerPath    = dbus.ObjectPath("/org/freedesktop/UPower")
	upowerDisplay = dbus.ObjectPath("/org/freedesktop/UPower/devices/DisplayDevice")
	upowerDevice  = "org.freedesktop.UPower.Device"
	nmName        = "org.freedesktop.NetworkManager"
	nmPath        = dbus.ObjectPath("/org/freedesktop/NetworkManager")
)

// NetworkManager's NMMetered values that mean the connection costs by the
// byte: NM_METERED_YES, and NM_METERED_GUESS_YES (a phone's hotspot, say).
const (
	nmMeteredYes      = 1
	nmMeteredGuessYes = 3
)

// Power is what UPower says of the laptop's power.
type Power struct {
	OnBattery bool
	// Percentage is the battery's charge; Present says the laptop has a
	// battery whose charge UPower knows.
	Percentage float64
	Present    bool
}

// Host is what the daemon asks of the machine it runs on. An error means
// the service is absent or broken, and so no restriction.
type Host interface {
	Power(ctx context.Context) (Power, error)
	Metered(ctx context.Context) (bool, error)
}

// systemBus reads UPower and NetworkManager over a bus connection of its
// own (the daemon's API may be on another bus).
type systemBus struct {
	conn *dbus.Conn
}

// connectHost connects to the bus where UPower and NetworkManager live
// ("system", or an address); "none", or a machine without that bus, gives
// no host and so no restriction.
func connectHost(spec string, log *slog.Logger) *systemBus {
	if spec == "none" {
		return nil
	}
	conn, err := ConnectBus(spec)
	if err != nil {
		log.Info("no system bus: the battery and metered-connection rules are off", "err", err)
		return nil
	}
	return &systemBus{conn: conn}
}

func (s *systemBus) get(ctx context.Context, name string, path dbus.ObjectPath, iface, prop string, dst any) error {
	var v dbus.Variant
	err := s.conn.Object(name, path).CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, iface, prop).Store(&v)
	if err != nil {
		return fmt.Errorf("%s %s.%s: %w", name, iface, prop, err)
	}
	if err := v.Store(dst); err != nil {
		return fmt.Errorf("%s %s.%s: %w", name, iface, prop, err)
	}
	return nil
}

// Power reads UPower's OnBattery and its display device (the laptop's
// batteries as one).
func (s *systemBus) Power(ctx context.Context) (Power, error) {
	var p Power
	if err := s.get(ctx, upowerName, upowerPath, upowerName, "OnBattery", &p.OnBattery); err != nil {
		return Power{}, err
	}
	if !p.OnBattery {
		return p, nil
	}
	if err := s.get(ctx, upowerName, upowerDisplay, upowerDevice, "IsPresent", &p.Present); err != nil {
		return Power{}, err
	}
	if err := s.get(ctx, upowerName, upowerDisplay, upowerDevice, "Percentage", &p.Percentage); err != nil {
		return Power{}, err
	}
	return p, nil
}

// Metered reads NetworkManager's Metered, for its primary connection.
func (s *systemBus) Metered(ctx context.Context) (bool, error) {
	var m uint32
	if err := s.get(ctx, nmName, nmPath, nmName, "Metered", &m); err != nil {
		return false, err
	}
	return meteredValue(m), nil
}

func meteredValue(m uint32) bool { return m == nmMeteredYes || m == nmMeteredGuessYes }

// watch calls changed whenever UPower's or NetworkManager's properties
// change, or either service comes or goes, until ctx ends.
func (s *systemBus) watch(ctx context.Context, changed func(), log *slog.Logger) {
	ch := make(chan *dbus.Signal, 16)
	s.conn.Signal(ch)
	defer s.conn.RemoveSignal(ch)
	for _, path := range []dbus.ObjectPath{upowerPath, upowerDisplay, nmPath} {
		if err := s.conn.AddMatchSignalContext(ctx, dbus.WithMatchObjectPath(path), dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchMember("PropertiesChanged")); err != nil {
			log.Warn("cannot watch the system bus; rechecking on a timer only", "err", err)
			return
		}
	}
	for _, name := range []string{upowerName, nmName} {
		s.conn.AddMatchSignalContext(ctx, dbus.WithMatchInterface("org.freedesktop.DBus"), dbus.WithMatchMember("NameOwnerChanged"), dbus.WithMatchArg(0, name))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
			// A burst of changes (UPower sends several at a plug-in) is
			// one look: drain what is queued first.
			for len(ch) > 0 {
				<-ch
			}
			changed()
		}
	}
}

func (s *systemBus) Close() error { return s.conn.Close() }
