package daemon

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"
	"github.com/godbus/dbus/v5/prop"
)

// The D-Bus names of the updater (SPEC.md §11).
const (
	BusName    = "org.peerup.Updater1"
	ObjectPath = dbus.ObjectPath("/org/peerup/Updater1")
	Interface  = "org.peerup.Updater1"
)

// Error names, as D-Bus clients see them: the core sets one in
// Props.ErrorName when an operation fails.
const (
	ErrorPrefix     = "org.peerup.Updater1.Error."
	ErrorWrongState = ErrorPrefix + "WrongState"
	ErrorPoll       = ErrorPrefix + "Poll"
	ErrorFetch      = ErrorPrefix + "Fetch"
	ErrorApply      = ErrorPrefix + "Apply"
	ErrorRollback   = ErrorPrefix + "Rollback"
	ErrorCancelled  = ErrorPrefix + "Cancelled"
)

// ConnectBus connects to "system", "session" or a bus address.
func ConnectBus(spec string) (*dbus.Conn, error) {
	var conn *dbus.Conn
	var err error
	switch spec {
	case "system":
		conn, err = dbus.ConnectSystemBus()
	case "session":
		conn, err = dbus.ConnectSessionBus()
	default:
		conn, err = dbus.Connect(spec)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to the %s bus: %w", spec, err)
	}
	return conn, nil
}

// Service exports a Core on D-Bus.
type Service struct {
	conn  *dbus.Conn
	core  *Core
	props *prop.Properties
}

// methods is the object whose exported methods become the interface's.
type methods struct{ core *Core }

func dbusErr(err error) *dbus.Error {
	if err == nil {
		return nil
	}
	var ws *WrongStateError
	if errors.As(err, &ws) {
		return dbus.NewError(ErrorWrongState, []any{err.Error()})
	}
	return dbus.NewError(ErrorPrefix+"Failed", []any{err.Error()})
}

func (m methods) Poll() *dbus.Error     { return dbusErr(m.core.Poll()) }
func (m methods) Fetch() *dbus.Error    { return dbusErr(m.core.Fetch()) }
func (m methods) Apply() *dbus.Error    { return dbusErr(m.core.Apply()) }
func (m methods) Rollback() *dbus.Error { return dbusErr(m.core.Rollback()) }
func (m methods) Cancel() *dbus.Error   { return dbusErr(m.core.Cancel()) }
func (m methods) MarkGood() *dbus.Error { return dbusErr(m.core.MarkGood()) }
func (m methods) Unhold() *dbus.Error   { return dbusErr(m.core.Unhold()) }

func (m methods) Hold(v uint64) *dbus.Error      { return dbusErr(m.core.Hold(v)) }
func (m methods) UnmarkBad(v uint64) *dbus.Error { return dbusErr(m.core.UnmarkBad(v)) }

func propValues(p Props) map[string]any {
	return map[string]any{
		"State":            string(p.State),
		"Image":            p.Image,
		"CurrentVersion":   p.CurrentVersion,
		"PreviousVersion":  p.PreviousVersion,
		"AvailableVersion": p.AvailableVersion,
		"DownloadSize":     p.DownloadSize,
		"DownloadedBytes":  p.DownloadedBytes,
		"ErrorName":        p.ErrorName,
		"ErrorMessage":     p.ErrorMessage,
		"PeerCount":        p.PeerCount,
		"HeldVersion":      p.HeldVersion,
		"BadVersion":       p.BadVersion,
		"SwitchPending":    p.SwitchPending,
		"UpdateID":         p.UpdateID,
		"UpdateLabel":      p.UpdateLabel,
		"UpdateMessage":    p.UpdateMessage,
		"Version":          p.Version,
		"UnpackedSize":     p.UnpackedSize,
		"FullDownloadSize": p.FullDownloadSize,
		"FullUnpackedSize": p.FullUnpackedSize,
		"RolloutPercent":   p.RolloutPercent,
		"RolloutWaiting":   p.RolloutWaiting,
		"Waiting":          p.Waiting,
	}
}

// propMap is the interface's properties, with p's values, as prop
// exports them: read-only, each change signalled.
func propMap(p Props) map[string]*prop.Prop {
	pm := map[string]*prop.Prop{}
	for name, v := range propValues(p) {
		pm[name] = &prop.Prop{Value: v, Writable: false, Emit: prop.EmitTrue}
	}
	return pm
}

// Introspection is the interface as the daemon exports it, and as
// daemon/dist/org.peerup.Updater1.xml ships it (for
// /usr/share/dbus-1/interfaces, where bindings generators look).
func Introspection() introspect.Interface {
	pm := propMap(Props{})
	var props []introspect.Property
	for _, name := range slices.Sorted(maps.Keys(pm)) {
		props = append(props, pm[name].Introspection(name))
	}
	version := []introspect.Arg{{Name: "version", Type: "t", Direction: "in"}}
	return introspect.Interface{
		Name: Interface,
		Methods: []introspect.Method{
			{Name: "Poll"}, {Name: "Fetch"}, {Name: "Apply"}, {Name: "Rollback"}, {Name: "Cancel"},
			{Name: "MarkGood"}, {Name: "Hold", Args: version}, {Name: "Unhold"}, {Name: "UnmarkBad", Args: version},
		},
		Signals: []introspect.Signal{
			{Name: "StateChanged", Args: []introspect.Arg{{Name: "state", Type: "s"}}},
			{Name: "UpdateReady", Args: []introspect.Arg{{Name: "version", Type: "t"}}},
		},
		Properties: props,
	}
}

// InterfaceXML is Introspection as an introspection document.
func InterfaceXML() ([]byte, error) {
	b, err := xml.MarshalIndent(introspect.Node{Interfaces: []introspect.Interface{Introspection()}}, "", "  ")
	if err != nil {
		return nil, err
	}
	const doctype = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<!-- peerup's updater interface (SPEC.md §11). Install as
     /usr/share/dbus-1/interfaces/org.peerup.Updater1.xml. Generated by
     daemon.InterfaceXML; TestInterfaceXMLIsCurrent keeps it so. -->
`
	return append(append([]byte(doctype), b...), '\n'), nil
}

// Export publishes core on conn under BusName and ObjectPath.
func Export(conn *dbus.Conn, core *Core) (*Service, error) {
	s := &Service{conn: conn, core: core}
	if err := conn.Export(methods{core}, ObjectPath, Interface); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	props, err := prop.Export(conn, ObjectPath, prop.Map{Interface: propMap(core.Props())})
	if err != nil {
		return nil, fmt.Errorf("export properties: %w", err)
	}
	s.props = props
	node := &introspect.Node{
		Name: string(ObjectPath),
		Interfaces: []introspect.Interface{
			introspect.IntrospectData,
			prop.IntrospectData,
			Introspection(),
		},
	}
	if err := conn.Export(introspect.NewIntrospectable(node), ObjectPath, "org.freedesktop.DBus.Introspectable"); err != nil {
		return nil, fmt.Errorf("export introspection: %w", err)
	}
	core.Observe(s)
	reply, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return nil, fmt.Errorf("own %s: %w", BusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return nil, fmt.Errorf("own %s: the name is taken (another peerup daemon on this bus?)", BusName)
	}
	return s, nil
}

// PropsChanged mirrors the core's properties; prop emits PropertiesChanged.
func (s *Service) PropsChanged(old, cur Props) {
	ov, cv := propValues(old), propValues(cur)
	// State goes last: a client that sees the new state and reads the rest
	// must find them already updated.
	for name, v := range cv {
		if name != "State" && ov[name] != v {
			s.set(name, v)
		}
	}
	if ov["State"] != cv["State"] {
		s.set("State", cv["State"])
	}
	if old.State != cur.State {
		s.conn.Emit(ObjectPath, Interface+".StateChanged", string(cur.State))
	}
}

// set updates a property. prop's setter panics when emitting the change
// fails (the bus went away); the updater must outlive its bus, so that is
// caught here.
func (s *Service) set(name string, v any) {
	defer func() {
		if p := recover(); p != nil {
			s.core.o.Log.Warn("D-Bus property update not sent", "property", name, "err", p)
		}
	}()
	s.props.SetMust(Interface, name, v)
}

// UpdateReady emits the UpdateReady signal.
func (s *Service) UpdateReady(v uint64) {
	s.conn.Emit(ObjectPath, Interface+".UpdateReady", v)
}

// Client is the CLI's view of a running daemon.
type Client struct {
	conn *dbus.Conn
	obj  dbus.BusObject
}

// Dial finds the daemon on a bus; it fails if no daemon owns the name.
func Dial(spec string) (*Client, error) {
	conn, err := ConnectBus(spec)
	if err != nil {
		return nil, err
	}
	var has bool
	if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, BusName).Store(&has); err != nil || !has {
		conn.Close()
		return nil, fmt.Errorf("no peerup daemon on the %s bus", spec)
	}
	return &Client{conn: conn, obj: conn.Object(BusName, ObjectPath)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call invokes a method by name (Poll, Fetch, Apply, Rollback, Cancel).
func (c *Client) Call(m Method) error {
	if err := c.obj.Call(Interface+"."+string(m), 0).Err; err != nil {
		var de dbus.Error
		if errors.As(err, &de) && len(de.Body) > 0 {
			return fmt.Errorf("%s: %v (%s)", m, de.Body[0], strings.TrimPrefix(de.Name, ErrorPrefix))
		}
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

// Props reads every property.
func (c *Client) Props() (Props, error) {
	var all map[string]dbus.Variant
	if err := c.obj.Call("org.freedesktop.DBus.Properties.GetAll", 0, Interface).Store(&all); err != nil {
		return Props{}, fmt.Errorf("read properties: %w", err)
	}
	var p Props
	get := func(name string, dst any) {
		if v, ok := all[name]; ok {
			v.Store(dst)
		}
	}
	var state string
	get("State", &state)
	p.State = State(state)
	get("Image", &p.Image)
	get("CurrentVersion", &p.CurrentVersion)
	get("PreviousVersion", &p.PreviousVersion)
	get("AvailableVersion", &p.AvailableVersion)
	get("DownloadSize", &p.DownloadSize)
	get("DownloadedBytes", &p.DownloadedBytes)
	get("ErrorName", &p.ErrorName)
	get("ErrorMessage", &p.ErrorMessage)
	get("PeerCount", &p.PeerCount)
	get("HeldVersion", &p.HeldVersion)
	get("BadVersion", &p.BadVersion)
	get("SwitchPending", &p.SwitchPending)
	get("UpdateID", &p.UpdateID)
	get("UpdateLabel", &p.UpdateLabel)
	get("UpdateMessage", &p.UpdateMessage)
	get("Version", &p.Version)
	get("UnpackedSize", &p.UnpackedSize)
	get("FullDownloadSize", &p.FullDownloadSize)
	get("FullUnpackedSize", &p.FullUnpackedSize)
	get("RolloutPercent", &p.RolloutPercent)
	get("RolloutWaiting", &p.RolloutWaiting)
	get("Waiting", &p.Waiting)
	return p, nil
}

// Conn exposes the connection (to watch signals).
func (c *Client) Conn() *dbus.Conn { return c.conn }

func busy(s State) bool {
	return s == StatePolling || s == StateFetching || s == StateApplying
}

// CallAndWait invokes a method and waits until the daemon leaves the busy
// states it passes through, reporting progress properties to onProps.
func (c *Client) CallAndWait(ctx context.Context, m Method, onProps func(Props)) (Props, error) {
	ch := make(chan *dbus.Signal, 64)
	c.conn.Signal(ch)
	defer c.conn.RemoveSignal(ch)
	if err := c.conn.AddMatchSignal(dbus.WithMatchObjectPath(ObjectPath)); err != nil {
		return Props{}, err
	}
	if err := c.Call(m); err != nil {
		return Props{}, err
	}
	for {
		p, err := c.Props()
		if err != nil {
			return p, err
		}
		if onProps != nil {
			onProps(p)
		}
		if !busy(p.State) {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-ch:
		}
	}
}
