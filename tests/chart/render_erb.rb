# Renders one BOSH job template the way bosh-template does for these templates: ERB with
# trim mode "-", properties looked up by dotted name with p() and if_p().
#   ruby render_erb.rb TEMPLATE PROPERTIES_JSON
require 'erb'
require 'json'
require 'yaml'

class MissingProperty < StandardError; end

class Context
  def initialize(properties)
    @properties = properties
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

template, properties = ARGV
print Context.new(JSON.parse(properties)).render(File.read(template))
