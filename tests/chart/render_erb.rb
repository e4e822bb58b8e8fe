# Renders one BOSH job template the way bosh-template does for these templates: ERB with
# trim mode "-", properties looked up by dotted name with p() and if_p(), and `spec` (the
# instance: spec.ip, …) from SPEC_JSON.
#   ruby render_erb.rb TEMPLATE PROPERTIES_JSON [SPEC_JSON]
require 'erb'
require 'json'
require 'ostruct'
require 'yaml'

class MissingProperty < StandardError; end

class Context
  attr_reader :spec

  def initialize(properties, spec)
    @properties = properties
    @spec = OpenStruct.new(spec)
  end

  def lookup(name)
    name.split('.').reduce(@properties) do |node, key|
      return [false, nil] unless node.is_a?(Hash) && node.key?(key)
      node[key]
    end.then { |v| [!v.nil?, v] }
  end

  def p(name, *default)
    found, value = lookup(name)
    return value if found
    return default.first unless default.empty?
    raise MissingProperty, "Can't find property '#{name}'"
  end

  def if_p(*names)
    values = names.map { |n| lookup(n) }
    return unless values.all? { |found, _| found }
    yield(*values.map { |_, v| v })
  end

  def render(text)
    ERB.new(text, trim_mode: '-').result(binding)
  end
end

template, properties, spec = ARGV
print Context.new(JSON.parse(properties), JSON.parse(spec || '{}')).render(File.read(template))
